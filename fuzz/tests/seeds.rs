//! Writes the seed corpora under `fuzz/corpus/` (kept in the repository): tiny images in every
//! format stylefarm decodes, job specs, and one valid request of every gRPC method. Run it
//! after the protocol or the targets change (it only adds or overwrites the `seed-*` files;
//! libFuzzer's own finds, if any were kept, are left alone):
//!
//! ```text
//! cd fuzz && cargo test --test seeds -- --ignored
//! ```
//!
//! In the `requests` seeds an id or blob hash `#0` stands for the newest the coordinator
//! handed out (see `fuzz_targets/requests.rs`).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, Rgb32FImage, RgbImage, RgbaImage};
use prost::Message;
use stylefarm_proto::v1;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed file");
}

/// A 6x4 image with a different colour in every pixel (odd sizes catch swapped sides).
fn pattern() -> RgbImage {
    RgbImage::from_fn(6, 4, |x, y| Rgb([(x * 40) as u8, (y * 60) as u8, 200]))
}

fn encoded(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("encoding {format:?}: {e}"));
    out.into_inner()
}

/// A TIFF-structured Exif APP1 payload holding only Orientation = `orientation`.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut e = b"Exif\0\0II*\0".to_vec();
    e.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    e.extend_from_slice(&1u16.to_le_bytes()); // one entry
    e.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    e.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    e.extend_from_slice(&1u32.to_le_bytes()); // count
    e.extend_from_slice(&orientation.to_le_bytes());
    e.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, no next IFD
    e
}

fn images() {
    let dir = corpus("decode_image");
    let rgb = DynamicImage::ImageRgb8(pattern());
    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(5, 3, |x, y| {
        image::Rgba([(x * 50) as u8, (y * 80) as u8, 30, (x * y * 20) as u8])
    }));
    write(&dir, "png-rgb8", &encoded(rgb.clone(), ImageFormat::Png));
    write(&dir, "png-rgba8", &encoded(rgba.clone(), ImageFormat::Png));
    write(
        &dir,
        "png-gray16",
        &encoded(DynamicImage::ImageLuma16(rgb.to_luma16()), ImageFormat::Png),
    );
    write(&dir, "jpeg", &encoded(rgb.clone(), ImageFormat::Jpeg));
    write(
        &dir,
        "jpeg-gray",
        &encoded(DynamicImage::ImageLuma8(rgb.to_luma8()), ImageFormat::Jpeg),
    );
    // CMYK with an Exif orientation (rotated 90 degrees): the decoder's two odd paths.
    let cmyk: Vec<u8> = (0..8 * 8).flat_map(|i| [i as u8 * 4, 0, 255, 40]).collect();
    let mut jpeg = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 90);
    enc.add_app_segment(1, &exif_orientation(6)).expect("app1");
    enc.encode(&cmyk, 8, 8, jpeg_encoder::ColorType::Cmyk)
        .expect("a CMYK JPEG");
    write(&dir, "jpeg-cmyk-exif", &jpeg);
    write(&dir, "gif", &encoded(rgba.clone(), ImageFormat::Gif));
    write(&dir, "bmp", &encoded(rgb.clone(), ImageFormat::Bmp));
    write(&dir, "tiff", &encoded(rgb.clone(), ImageFormat::Tiff));
    write(&dir, "pnm", &encoded(rgb.clone(), ImageFormat::Pnm));
    write(&dir, "tga", &encoded(rgba.clone(), ImageFormat::Tga));
    write(&dir, "qoi", &encoded(rgba.clone(), ImageFormat::Qoi));
    write(&dir, "ico", &encoded(rgba.clone(), ImageFormat::Ico));
    write(&dir, "webp", &encoded(rgba, ImageFormat::WebP));
    let hdr = Rgb32FImage::from_fn(4, 3, |x, y| Rgb([x as f32 * 0.5, y as f32, 2.0]));
    write(
        &dir,
        "hdr",
        &encoded(DynamicImage::ImageRgb32F(hdr), ImageFormat::Hdr),
    );
}

fn blob(hash: &str) -> Option<v1::BlobRef> {
    Some(v1::BlobRef {
        sha256: hash.to_string(),
        size: 0,
    })
}

/// Small valid settings: every optional field set.
fn settings() -> v1::RenderSettings {
    v1::RenderSettings {
        image_size: Some(32),
        num_iterations: Some(2),
        optimizer: v1::Optimizer::Lbfgs as i32,
        learning_rate: None,
        line_search: true,
        lbfgs_history: Some(5),
        content_weight: Some(1.0),
        style_weight: Some(100.0),
        tv_weight: Some(0.001),
        content_layers: vec!["relu4_2".into()],
        style_layers: vec!["relu1_1".into(), "relu2_1".into(), "relu3_1".into()],
        style_blend_weights: vec![],
        style_scale: Some(1.0),
        init: v1::Init::Random as i32,
        seed: 7,
        original_colors: false,
        pooling: v1::Pooling::Avg as i32,
    }
}

/// Jobs of every shape the planner knows, on the blob `#0` (the coordinator's seed image).
fn specs() -> Vec<(&'static str, v1::JobSpec)> {
    let one = v1::JobSpec {
        name: "seed".into(),
        content: vec![blob("#0").unwrap()],
        styles: vec![blob("#0").unwrap()],
        settings: Some(settings()),
        ..Default::default()
    };
    let adam_two_styles = v1::JobSpec {
        styles: vec![blob("#0").unwrap(), blob("#0").unwrap()],
        settings: Some(v1::RenderSettings {
            optimizer: v1::Optimizer::Adam as i32,
            learning_rate: Some(5.0),
            lbfgs_history: None,
            style_blend_weights: vec![1.0, 3.0],
            init: v1::Init::Content as i32,
            ..settings()
        }),
        ..one.clone()
    };
    let frames = v1::JobSpec {
        content: vec![blob("#0").unwrap(); 3],
        content_names: vec!["a.jpg".into(), "b.png".into(), "a.png".into()],
        temporal: true,
        priority: 3,
        max_attempts: 2,
        ..one.clone()
    };
    let init_image = v1::JobSpec {
        init_image: blob("#0"),
        settings: Some(v1::RenderSettings {
            init: v1::Init::Image as i32,
            ..settings()
        }),
        ..one.clone()
    };
    let sweep = v1::JobSpec {
        sweeps: vec![
            v1::Sweep {
                parameter: "style-weight".into(),
                values: vec!["10".into(), "1000".into()],
            },
            v1::Sweep {
                parameter: "style-scale".into(),
                values: vec!["0.5".into(), "1".into()],
            },
        ],
        ..one.clone()
    };
    let scales = v1::JobSpec {
        scales: Some(v1::Scales {
            sizes: vec![16, 32],
            iterations: vec![2, 1],
        }),
        ..one.clone()
    };
    let tiles = v1::JobSpec {
        settings: Some(v1::RenderSettings {
            image_size: Some(96),
            ..settings()
        }),
        tiles: Some(v1::TileOptions {
            tile_size: 48,
            tile_overlap: 16,
        }),
        required_memory_bytes: 1 << 30,
        ..one.clone()
    };
    vec![
        ("one", one),
        ("adam-two-styles", adam_two_styles),
        ("frames", frames),
        ("init-image", init_image),
        ("sweep", sweep),
        ("scales", scales),
        ("tiles", tiles),
        ("empty", v1::JobSpec::default()),
    ]
}

fn job_specs() {
    let dir = corpus("job_spec");
    for (name, spec) in specs() {
        // libFuzzer skips empty files (it always tries the empty input anyway).
        if spec != v1::JobSpec::default() {
            write(&dir, name, &spec.encode_to_vec());
        }
    }
}

/// One request: the method's index in `requests.rs`'s `METHODS`, then the message.
fn request(dir: &Path, method: u8, name: &str, message: impl Message) {
    let mut bytes = vec![method];
    message.encode(&mut bytes).expect("a Vec grows");
    write(dir, &format!("{method:02}-{name}"), &bytes);
}

fn requests() {
    let dir = corpus("requests");
    for (name, spec) in specs() {
        let req = v1::SubmitJobRequest { spec: Some(spec) };
        request(&dir, 0, &format!("submit-{name}"), req.clone());
        request(&dir, 1, &format!("plan-{name}"), req);
    }
    let job = || "#0".to_string();
    request(&dir, 2, "get", v1::GetJobRequest { job_id: job() });
    request(&dir, 3, "list", v1::ListJobsRequest { limit: 5 });
    request(&dir, 4, "watch", v1::WatchJobRequest { job_id: job() });
    request(&dir, 5, "cancel", v1::CancelJobRequest { job_id: job() });
    request(&dir, 6, "retry", v1::RetryJobRequest { job_id: job() });
    request(
        &dir,
        7,
        "find-missing",
        v1::FindMissingBlobsRequest {
            sha256: vec!["#0".into(), "00".repeat(32)],
        },
    );
    let png = encoded(DynamicImage::ImageRgb8(pattern()), ImageFormat::Png);
    request(
        &dir,
        8,
        "write",
        v1::WriteBlobRequest {
            sha256: "#".into(),
            size: 0,
            data: png,
        },
    );
    request(
        &dir,
        8,
        "write-wrong-hash",
        v1::WriteBlobRequest {
            sha256: "ab".repeat(32),
            size: 3,
            data: b"abc".to_vec(),
        },
    );
    request(
        &dir,
        9,
        "read",
        v1::ReadBlobRequest {
            sha256: "#0".into(),
            offset: 10,
        },
    );
    request(
        &dir,
        10,
        "register",
        v1::RegisterWorkerRequest {
            name: "seed-worker".into(),
            capabilities: Some(v1::Capabilities {
                device: v1::Device::Cpu as i32,
                threads: 2,
                memory_bytes: 16 << 30,
                models: vec!["vgg19-caffe".into(), "vgg16-caffe".into()],
                ..Default::default()
            }),
        },
    );
    request(
        &dir,
        11,
        "lease",
        v1::LeaseTaskRequest {
            worker_id: "#0".into(),
            wait_ms: 50,
        },
    );
    let losses = v1::Losses {
        content: 1.0,
        style: 2.0,
        tv: 0.5,
        total: 3.5,
    };
    request(
        &dir,
        12,
        "update",
        v1::UpdateTaskRequest {
            lease_id: "#0".into(),
            progress: Some(v1::Progress {
                iteration: 1,
                total_iterations: 2,
                losses: Some(losses),
                preview: blob("#0"),
            }),
        },
    );
    request(
        &dir,
        13,
        "complete",
        v1::CompleteTaskRequest {
            lease_id: "#0".into(),
            result: blob("#0"),
            final_losses: Some(losses),
            seconds: 1.5,
        },
    );
    request(
        &dir,
        14,
        "fail",
        v1::FailTaskRequest {
            lease_id: "#0".into(),
            kind: v1::FailureKind::OutOfMemory as i32,
            message: "seed failure".into(),
        },
    );
    let hello = v1::shard_reply::Reply::Hello(v1::ShardHello {
        lease_id: "#0".into(),
        preprocess: "caffe".into(),
        channels: vec![64, 128, 256],
    });
    request(
        &dir,
        15,
        "shard-hello",
        v1::ShardReply { reply: Some(hello) },
    );
    let grams = v1::shard_reply::Reply::Grams(v1::ShardGrams {
        evaluation: 0,
        grams: vec![vec![0; 16]],
        counts: vec![4],
        content: 0.5,
        ..Default::default()
    });
    request(
        &dir,
        15,
        "shard-grams",
        v1::ShardReply { reply: Some(grams) },
    );
    request(&dir, 16, "list-workers", v1::ListWorkersRequest {});
    request(&dir, 17, "queue-stats", v1::QueueStatsRequest {});
}

#[test]
#[ignore = "writes the seed corpora: run it by hand after the protocol changes"]
fn write_seed_corpora() {
    images();
    job_specs();
    requests();
}
