//! The `stylefarm` binary against an in-process farm: `submit` prints the job id alone,
//! `watch` exits 0 only for a completed job and says in one sentence why not otherwise,
//! `fetch`, `jobs`, `cancel` and `workers` work, errors are one sentence, and `render` (on
//! its embedded farm) writes exactly the engine's own PNG.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use image::{Rgb, RgbImage};
use stylefarm_client::embedded::EmbeddedFarm;
use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits};
use stylefarm_core::layers::Pooling;
use stylefarm_core::settings::RenderSettings;
use stylefarm_engine::render::{render, RenderInputs};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;
use stylefarm_worker::fake::FakeEngine;
use stylefarm_worker::{Engine, TaskInput};

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `stylefarm ARGS` (off the async runtime, which serves the farm meanwhile).
async fn stylefarm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stylefarm"));
    cmd.args(args)
        .env_remove("STYLEFARM_COORDINATOR")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn pattern(w: u32, h: u32, k: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 7 + y * k) % 256) as u8,
            ((x * y + k * 13) % 256) as u8,
            (((x / 3 + y / 5) * 40 * k) % 256) as u8,
        ])
    })
}

fn write_png(dir: &Path, name: &str, img: &RgbImage) -> String {
    let path = dir.join(name);
    std::fs::write(&path, encode_png(img).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn fake_png(content: &RgbImage, image_size: u32) -> Vec<u8> {
    let task = TaskInput {
        inputs: RenderInputs {
            content: content.clone(),
            styles: vec![],
            init_image: None,
        },
        settings: RenderSettings {
            image_size,
            ..RenderSettings::default()
        },
        style_ids: vec![],
    };
    encode_png(&FakeEngine::expected_output(&task)).unwrap()
}

fn is_job_id(s: &str) -> bool {
    s.strip_prefix("job-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The error sentence: the last line on stderr, `error: ...`, the only such line (progress
/// lines may come before it).
fn one_sentence_error(out: &Output) -> &str {
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let errors = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .count();
    assert_eq!(errors, 1, "{:?}", out.stderr);
    out.stderr
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("{:?}", out.stderr))
}

async fn farm(engine: impl Engine) -> EmbeddedFarm {
    EmbeddedFarm::start(Arc::new(engine), |_| {}).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_fetch_jobs_cancel_and_workers() {
    let farm = farm(FakeEngine::new(Duration::from_millis(2))).await;
    let url = farm.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<RgbImage> = (1..=3).map(|k| pattern(40, 30, k)).collect();
    let a = write_png(dir.path(), "a.png", &frames[0]);
    let b = write_png(dir.path(), "b.png", &frames[1]);
    let c = write_png(dir.path(), "c.png", &frames[2]);
    let style = write_png(dir.path(), "style.png", &pattern(16, 16, 9));
    let quick = ["--image-size", "32", "--num-iterations", "5"];

    // submit: the job id alone on stdout.
    let mut args = vec!["submit", &a, &style, "--coordinator", &url];
    args.extend(quick);
    let out = stylefarm(&args, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    let id = out.stdout.trim_end().to_string();
    assert!(
        is_job_id(&id) && out.stdout == format!("{id}\n"),
        "{:?}",
        out.stdout
    );
    assert_eq!(out.stderr, "");

    // watch, with the coordinator from the environment: 0 once completed.
    let env = [("STYLEFARM_COORDINATOR", url.as_str())];
    let out = stylefarm(&["watch", &id], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.ends_with("completed (1 task)\n"),
        "{}",
        out.stderr
    );

    // fetch: the result's bytes for .png, converted for .jpg.
    let png_out = dir.path().join("out.png");
    let out = stylefarm(&["fetch", &id, "-o", png_out.to_str().unwrap()], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(std::fs::read(&png_out).unwrap() == fake_png(&frames[0], 32));
    let jpg_out = dir.path().join("out.jpg");
    let out = stylefarm(&["fetch", &id, "-o", jpg_out.to_str().unwrap()], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let jpg = std::fs::read(&jpg_out).unwrap();
    assert_eq!(&jpg[..2], &[0xff, 0xd8]);
    let decoded = decode_image(&jpg, "jpg", &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.dimensions(), (32, 24));

    // Several frames, as a list and repeated: one task each, fetched into a directory.
    let list = format!("{a},{b}");
    let mut args = vec!["submit", &list, &c, &style];
    args.extend(quick);
    let out = stylefarm(&args, &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let batch = out.stdout.trim_end().to_string();
    assert!(is_job_id(&batch), "{:?}", out.stdout);
    let out = stylefarm(&["watch", &batch], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.ends_with("completed (3 tasks)\n"),
        "{}",
        out.stderr
    );
    let frames_dir = dir.path().join("frames");
    let out = stylefarm(&["fetch", &batch, "-o", frames_dir.to_str().unwrap()], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (name, frame) in ["a.png", "b.png", "c.png"].iter().zip(&frames) {
        assert!(
            std::fs::read(frames_dir.join(name)).unwrap() == fake_png(frame, 32),
            "{name}"
        );
    }
    let out = stylefarm(&["fetch", &batch, "-o", png_out.to_str().unwrap()], &env).await;
    assert!(
        one_sentence_error(&out).contains("give a directory"),
        "{}",
        out.stderr
    );

    // jobs and workers: tables.
    let out = stylefarm(&["jobs"], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("ID "), "{}", out.stdout);
    let row = out.stdout.lines().find(|l| l.starts_with(&batch)).unwrap();
    assert!(row.contains("completed") && row.contains("3/3"), "{row}");
    for args in [&["workers"][..], &["workers", "--live"]] {
        let out = stylefarm(args, &env).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let row = out.stdout.lines().nth(1).unwrap();
        assert!(
            row.contains("embedded") && row.contains(" live "),
            "{}",
            out.stdout
        );
    }

    // cancel: the job ends canceled, and watch says so with a non-zero exit.
    let mut args = vec!["submit", &a, &style, "--num-iterations", "100000"];
    args.extend(&quick[..2]);
    let out = stylefarm(&args, &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let long = out.stdout.trim_end().to_string();
    let out = stylefarm(&["cancel", &long], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{long} canceled\n"));
    let out = stylefarm(&["watch", &long], &env).await;
    assert_eq!(one_sentence_error(&out), format!("job {long} was canceled"));
    let out = stylefarm(&["fetch", &long, "-o", png_out.to_str().unwrap()], &env).await;
    assert!(
        one_sentence_error(&out).contains("canceled"),
        "{}",
        out.stderr
    );

    farm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_in_one_sentence_when_the_job_fails() {
    let farm = farm(FakeEngine::new(Duration::ZERO).failing("boom")).await;
    let env = [("STYLEFARM_COORDINATOR", farm.url())];
    let dir = tempfile::tempdir().unwrap();
    let content = write_png(dir.path(), "content.png", &pattern(40, 30, 1));
    let style = write_png(dir.path(), "style.png", &pattern(16, 16, 2));
    let args = [
        "submit",
        &content,
        &style,
        "--image-size",
        "32",
        "--num-iterations",
        "2",
        "--max-attempts",
        "1",
    ];
    let out = stylefarm(&args, &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim_end().to_string();
    let out = stylefarm(&["watch", &id], &env).await;
    let sentence = one_sentence_error(&out);
    assert!(
        sentence.starts_with(&format!(
            "job {id} failed: task 0 (content.png) failed after 1 attempt: "
        )),
        "{sentence}"
    );
    assert!(
        sentence.ends_with("fake engine failure: boom"),
        "{sentence}"
    );
    farm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_sentence() {
    let out = stylefarm(&["jobs", "--coordinator", "http://127.0.0.1:1"], &[]).await;
    let sentence = one_sentence_error(&out);
    assert!(
        sentence.starts_with("cannot reach the coordinator at http://127.0.0.1:1: "),
        "{sentence}"
    );

    let farm = farm(FakeEngine::new(Duration::ZERO)).await;
    let env = [("STYLEFARM_COORDINATOR", farm.url())];
    // The coordinator's INVALID_ARGUMENT and NOT_FOUND sentences pass through.
    let out = stylefarm(&["watch", "nonsense"], &env).await;
    assert!(
        one_sentence_error(&out).starts_with("invalid job_id: "),
        "{}",
        out.stderr
    );
    let missing = format!("job-{}", "0".repeat(32));
    let out = stylefarm(&["cancel", &missing], &env).await;
    assert_eq!(
        one_sentence_error(&out),
        format!("job {missing} does not exist")
    );
    // Bad files and options are named before anything is sent.
    let dir = tempfile::tempdir().unwrap();
    let style = write_png(dir.path(), "style.png", &pattern(16, 16, 2));
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    let out = stylefarm(&["submit", junk.to_str().unwrap(), &style], &env).await;
    let sentence = one_sentence_error(&out);
    assert!(
        sentence.starts_with(&format!("{} is not an image", junk.display())),
        "{sentence}"
    );
    let out = stylefarm(&["submit", &style, &style, "--style-weight", "-1"], &env).await;
    assert!(
        one_sentence_error(&out).starts_with("invalid style-weight: "),
        "{}",
        out.stderr
    );
    // Sizes a request can choose are bounded before any memory is taken, here and in
    // `render`: 10^9 L-BFGS pairs used to abort every worker that leased the job.
    let out_png = dir.path().join("x.png");
    let render = ["render", &style, &style, "-o", out_png.to_str().unwrap()];
    let submit = ["submit", &style, &style];
    for command in [&render[..], &submit[..]] {
        for (option, value) in [("--lbfgs-history", "1000000000"), ("--image-size", "1")] {
            let args = [command, &[option, value]].concat();
            let out = stylefarm(&args, &env).await;
            let sentence = one_sentence_error(&out);
            let expected = format!("invalid {}: ", option.trim_start_matches("--"));
            assert!(sentence.starts_with(&expected), "{args:?}: {sentence}");
        }
    }
    assert!(!out_png.exists());
    // A file that never ends is read only up to the limit, then refused.
    let out = stylefarm(&["submit", "/dev/zero", &style], &env).await;
    assert!(
        one_sentence_error(&out).contains("more than"),
        "{}",
        out.stderr
    );
    // TLS files with a plaintext address: said before connecting.
    let out = stylefarm(&["jobs", "--tls-ca", &style], &env).await;
    assert!(
        one_sentence_error(&out).contains("use https://"),
        "{}",
        out.stderr
    );
    farm.stop().await.unwrap();
}

fn tiny_vgg16() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/data/tiny_vgg16.safetensors")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_on_the_embedded_farm_writes_the_engines_own_png() {
    let dir = tempfile::tempdir().unwrap();
    let content_img = pattern(40, 32, 1);
    let style_img = pattern(36, 30, 3);
    let content = write_png(dir.path(), "content.png", &content_img);
    let style = write_png(dir.path(), "style.png", &style_img);
    let output = dir.path().join("out.png");
    let report = dir.path().join("report.json");
    let weights = tiny_vgg16();
    let out = stylefarm(
        &[
            "render",
            &content,
            &style,
            "-o",
            output.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--image-size",
            "40",
            "--num-iterations",
            "5",
            "--style-weight",
            "1000",
            "--seed",
            "3",
            "--save-iter",
            "2",
            "--print-iter",
            "1",
            "--report",
            report.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("wrote "), "{}", out.stderr);

    let settings = RenderSettings {
        image_size: 40,
        num_iterations: 5,
        style_weight: 1000.0,
        seed: 3,
        ..RenderSettings::default()
    };
    let vgg = Vgg::new(
        VggWeights::load(&weights, &Device::Cpu).unwrap(),
        Pooling::Max,
    )
    .unwrap();
    let inputs = RenderInputs {
        content: content_img,
        styles: vec![style_img],
        init_image: None,
    };
    let alone = render(&vgg, &inputs, &settings, &mut ()).unwrap();
    assert!(
        std::fs::read(&output).unwrap() == encode_png(&alone.image).unwrap(),
        "the embedded render's PNG differs from the engine's"
    );
    for it in [2, 4] {
        assert!(
            dir.path().join(format!("out_{it}.png")).is_file(),
            "snapshot {it}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["iterations"], 5);
    assert_eq!(report["width"], 40);
    // serde_json reads floats to within an ulp or so; the farm's own losses are compared
    // exactly in the tests crate.
    let total = report["final_losses"]["total"].as_f64().unwrap();
    assert!(
        (total - alone.losses.total).abs() <= 1e-12 * alone.losses.total.abs(),
        "{total} vs {}",
        alone.losses.total
    );
    assert_eq!(report["history"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_dry_run_prints_the_embedded_farms_plan_and_renders_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let content = write_png(dir.path(), "content.png", &pattern(200, 150, 1));
    let style = write_png(dir.path(), "style.png", &pattern(36, 30, 3));
    let output = dir.path().join("out.png");
    let weights = tiny_vgg16();
    let args = [
        "render",
        &content,
        &style,
        "-o",
        output.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--image-size",
        "200",
        "--tile-size",
        "96",
        "--init",
        "content",
        "--dry-run",
    ];
    let out = stylefarm(&[&args[..], &["--json"]].concat(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // 200x150 in 96 px tiles, in lock step (the default): the style targets, the embedded
    // worker's shard and the coordinator's driver; the plan lists the 3x2 tiles' contexts.
    let kinds: Vec<_> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("statistics"));
    assert_eq!(kinds.last().map(String::as_str), Some("lockstep"));
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| k == "shard"),
        "{kinds:?}"
    );
    assert_eq!(plan["tile_mode"], "lockstep");
    assert_eq!(plan["tiles"].as_array().unwrap().len(), 6);
    assert!(!output.exists(), "a dry run writes no image");
    let out = stylefarm(&args, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("tile grid 3x2") && out.stdout.contains("in lock step"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_dry_run_prints_the_plan_and_bad_splits_are_one_sentence() {
    let farm = farm(FakeEngine::new(Duration::from_millis(1))).await;
    let url = farm.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let content = write_png(dir.path(), "big.png", &pattern(120, 90, 1));
    let style = write_png(dir.path(), "style.png", &pattern(16, 16, 9));
    let base = [
        "submit",
        content.as_str(),
        style.as_str(),
        "--coordinator",
        url.as_str(),
        "--image-size",
        "200",
    ];

    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "--tile-size",
            "96",
            "--tile-overlap",
            "16",
            "--dry-run",
            "--json",
        ])
        .collect();
    let out = stylefarm(&args, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (plan["width"].as_u64(), plan["height"].as_u64()),
        (Some(200), Some(150))
    );
    let tiles = plan["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), 6, "{}", out.stdout);
    for key in ["x", "y", "w", "h"] {
        assert!(tiles[5][key].is_u64(), "{key}");
    }
    assert_eq!(
        tiles[5]["x"].as_u64().unwrap() + tiles[5]["w"].as_u64().unwrap(),
        200
    );
    assert!(plan["tasks"][1]["estimated_memory_bytes"].as_u64().unwrap() > 0);
    // Nothing was submitted.
    let jobs = stylefarm(&["jobs", "--coordinator", &url], &[]).await;
    assert_eq!(jobs.stdout.lines().count(), 1, "{}", jobs.stdout);

    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--tile-size", "96", "--dry-run"])
        .collect();
    let out = stylefarm(&args, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("tile grid 3x2") && out.stdout.contains("in lock step"),
        "{}",
        out.stdout
    );

    for (extra, expected) in [
        (
            &["--tile-size", "96", "--tile-overlap", "96"][..],
            "invalid spec.tiles.tile_overlap: 96 px is not smaller than the tile size of 96 px",
        ),
        (
            &["--sweep", "colour=1,2"][..],
            "invalid spec.sweeps[0].parameter: `colour` cannot be swept",
        ),
        (
            &["--scale-sizes", "300,100,200"][..],
            "invalid spec.scales.sizes: sizes must increase from stage to stage, not 300,100,200",
        ),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let out = stylefarm(&args, &[]).await;
        let e = one_sentence_error(&out);
        assert!(e.contains(expected), "{e}");
    }
    farm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeps_outputs_and_contact_sheet_are_fetched_by_name() {
    let farm = farm(FakeEngine::new(Duration::from_millis(1))).await;
    let url = farm.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let img = pattern(100, 80, 1);
    let content = write_png(dir.path(), "city.png", &img);
    let style = write_png(dir.path(), "style.png", &pattern(16, 16, 9));

    let id = stylefarm(
        &[
            "submit",
            &content,
            &style,
            "--coordinator",
            &url,
            "--image-size",
            "40",
            "--num-iterations",
            "2",
            "--sweep",
            "style-weight=10,100",
        ],
        &[],
    )
    .await;
    assert_eq!(id.code, 0, "{}", id.stderr);
    let id = id.stdout.trim().to_string();
    let watch = stylefarm(&["watch", &id, "--coordinator", &url], &[]).await;
    assert_eq!(watch.code, 0, "{}", watch.stderr);
    let out = dir.path().join("sweep");
    let fetch = stylefarm(
        &[
            "fetch",
            &id,
            "-o",
            out.to_str().unwrap(),
            "--coordinator",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(fetch.code, 0, "{}", fetch.stderr);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "city_style-weight=10.png",
            "city_style-weight=100.png",
            "city_sweep.png"
        ]
    );
    let sheet = dir.path().join("sheet.png");
    let fetch = stylefarm(
        &[
            "fetch",
            &id,
            "-o",
            sheet.to_str().unwrap(),
            "--coordinator",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(fetch.code, 0, "{}", fetch.stderr);
    assert_eq!(
        std::fs::read(&sheet).unwrap(),
        std::fs::read(out.join("city_sweep.png")).unwrap()
    );
    farm.stop().await.unwrap();
}
