//! Images in and out, through `stylefarm_core::image_io`'s public functions: every colour
//! type decoded to 8-bit RGB, refusals with one clear sentence (size limits checked before
//! decoding), resizing, encoding and atomic saves.

use std::fs;
use std::io::Cursor;

use image::{DynamicImage, ExtendedColorType, ImageBuffer};
use stylefarm_core::image_io::*;
use stylefarm_core::{CoreError, Preprocess, Result};

#[test]
fn pixels_round_trip_through_network_values() {
    let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 70, 200]));
    for pre in [Preprocess::Caffe, Preprocess::Torchvision] {
        let x = image_to_network(&img, pre);
        assert_eq!(network_to_image(&x, 5, 3, pre), Some(img.clone()));
        assert_eq!(network_to_image(&x, 4, 3, pre), None);
    }
}
use image::{GrayImage, ImageFormat, Luma, Rgb};

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn png_of(img: DynamicImage) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .expect("encode png");
    buf.into_inner()
}

fn decode(bytes: &[u8]) -> RgbImage {
    decode_image(bytes, "test image", &limits()).expect("decode")
}

fn assert_bad(result: Result<RgbImage>) -> String {
    match result {
        Err(e @ CoreError::BadImage { .. }) => e.to_string(),
        other => panic!("expected BadImage, got {other:?}"),
    }
}

fn close(a: Rgb<u8>, b: [u8; 3], tol: i32) -> bool {
    (0..3).all(|c| (i32::from(a[c]) - i32::from(b[c])).abs() <= tol)
}

/// An image whose every pixel differs from the others.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 37 + y * 11) as u8,
            (x * 13 + y * 29 + 100) as u8,
            (x * y * 7 + 3) as u8,
        ])
    })
}

// ---- decoding: colour types ----

#[test]
fn decodes_grayscale_8_bit() {
    let img = GrayImage::from_fn(3, 2, |x, y| Luma([(x * 100 + y * 20) as u8]));
    let out = decode(&png_of(DynamicImage::ImageLuma8(img.clone())));
    assert_eq!(out.dimensions(), (3, 2));
    for (x, y, p) in out.enumerate_pixels() {
        let g = img.get_pixel(x, y)[0];
        assert_eq!(p.0, [g, g, g]);
    }
}

#[test]
fn decodes_grayscale_16_bit() {
    let img: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(3, 1, vec![0, 257 * 128, 65535]).expect("buffer");
    let out = decode(&png_of(DynamicImage::ImageLuma16(img)));
    assert_eq!(out.get_pixel(0, 0).0, [0; 3]);
    assert_eq!(out.get_pixel(1, 0).0, [128; 3]);
    assert_eq!(out.get_pixel(2, 0).0, [255; 3]);
}

#[test]
fn decodes_rgb_16_bit() {
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_raw(2, 1, vec![65535, 0, 257 * 100, 257 * 7, 257 * 200, 0])
            .expect("buffer");
    let out = decode(&png_of(DynamicImage::ImageRgb16(img)));
    assert_eq!(out.get_pixel(0, 0).0, [255, 0, 100]);
    assert_eq!(out.get_pixel(1, 0).0, [7, 200, 0]);
}

#[test]
fn alpha_is_composited_over_white() {
    let img = image::RgbaImage::from_raw(3, 1, vec![0, 0, 0, 0, 10, 20, 30, 255, 0, 0, 0, 128])
        .expect("buffer");
    let out = decode(&png_of(DynamicImage::ImageRgba8(img)));
    assert_eq!(
        out.get_pixel(0, 0).0,
        [255; 3],
        "transparent black -> white"
    );
    assert_eq!(out.get_pixel(1, 0).0, [10, 20, 30], "opaque kept");
    assert_eq!(
        out.get_pixel(2, 0).0,
        [127; 3],
        "half-transparent black -> mid grey"
    );
    // Grey + alpha, 16-bit.
    let la: ImageBuffer<image::LumaA<u16>, Vec<u16>> =
        ImageBuffer::from_raw(2, 1, vec![0, 0, 257 * 50, 65535]).expect("buffer");
    let out = decode(&png_of(DynamicImage::ImageLumaA16(la)));
    assert_eq!(out.get_pixel(0, 0).0, [255; 3]);
    assert_eq!(out.get_pixel(1, 0).0, [50; 3]);
}

#[test]
fn decodes_palette_png() {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, 3, 2);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255u8, 0, 0, 0, 128, 0, 0, 0, 0]);
        // Entry 2 is fully transparent; 0 and 1 opaque.
        enc.set_trns(vec![255u8, 255, 0]);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[0, 1, 2, 1, 0, 0]).expect("data");
        w.finish().expect("finish");
    }
    let out = decode(&buf);
    assert_eq!(out.dimensions(), (3, 2));
    assert_eq!(out.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(out.get_pixel(1, 0).0, [0, 128, 0]);
    assert_eq!(
        out.get_pixel(2, 0).0,
        [255, 255, 255],
        "transparent entry -> white"
    );
    assert_eq!(out.get_pixel(0, 1).0, [0, 128, 0]);
    assert_eq!(out.get_pixel(2, 1).0, [255, 0, 0]);
}

#[test]
fn decodes_cmyk_jpeg() {
    // 16x8: left 8x8 block pure red in CMYK, right block 50% black.
    let (w, h) = (16u16, 8u16);
    let mut cmyk = Vec::new();
    for _y in 0..h {
        for x in 0..w {
            cmyk.extend_from_slice(if x < 8 {
                &[0, 255, 255, 0]
            } else {
                &[0, 0, 0, 128]
            });
        }
    }
    let mut buf = Vec::new();
    jpeg_encoder::Encoder::new(&mut buf, 100)
        .encode(&cmyk, w, h, jpeg_encoder::ColorType::Cmyk)
        .expect("encode cmyk");
    let out = decode(&buf);
    assert_eq!(out.dimensions(), (16, 8));
    let red = *out.get_pixel(3, 4);
    let grey = *out.get_pixel(12, 4);
    assert!(close(red, [255, 0, 0], 8), "red came out {red:?}");
    assert!(close(grey, [127, 127, 127], 8), "grey came out {grey:?}");
}

#[test]
fn decodes_lossless_webp() {
    let img = pattern(5, 3);
    let mut buf = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut buf)
        .encode(img.as_raw(), 5, 3, ExtendedColorType::Rgb8)
        .expect("encode webp");
    assert_eq!(&buf[8..12], b"WEBP");
    assert_eq!(decode(&buf), img);
}

/// A TIFF-structured Exif APP1 payload holding only Orientation = `orientation`.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut e = b"Exif\0\0".to_vec();
    e.extend_from_slice(b"II*\0"); // little endian TIFF
    e.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    e.extend_from_slice(&1u16.to_le_bytes()); // one entry
    e.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    e.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    e.extend_from_slice(&1u32.to_le_bytes()); // count
    e.extend_from_slice(&orientation.to_le_bytes());
    e.extend_from_slice(&[0, 0]); // value padding
    e.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    e
}

#[test]
fn exif_orientation_is_applied() {
    // A 4x2 grid of distinct colours, each cell an 8x8 JPEG block (so JPEG keeps the
    // colours): stored 32x16, displayed (rotated 90 degrees clockwise) 16x32.
    let colours: [[u8; 3]; 8] = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [0, 0, 0],
        [255, 255, 255],
    ];
    let cell = |cx: u32, cy: u32| colours[(cy * 4 + cx) as usize];
    let stored = RgbImage::from_fn(32, 16, |x, y| Rgb(cell(x / 8, y / 8)));
    let mut buf = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut buf, 100);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
    enc.add_app_segment(1, &exif_orientation(6)).expect("app1");
    enc.encode(stored.as_raw(), 32, 16, jpeg_encoder::ColorType::Rgb)
        .expect("encode");
    let out = decode(&buf);
    assert_eq!(out.dimensions(), (16, 32));
    // Rotating 90 degrees clockwise: stored cell (cx, cy) of a 4x2 grid lands at
    // displayed cell (2 - 1 - cy, cx) of a 2x4 grid.
    for cy in 0..2 {
        for cx in 0..4 {
            let (dx, dy) = (1 - cy, cx);
            let px = *out.get_pixel(dx * 8 + 4, dy * 8 + 4);
            assert!(
                close(px, cell(cx, cy), 12),
                "cell ({cx},{cy}) -> ({dx},{dy}) is {px:?}, expected {:?}",
                cell(cx, cy)
            );
        }
    }
    // Without the Exif block the same JPEG stays as stored.
    let mut plain = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut plain, 100);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
    enc.encode(stored.as_raw(), 32, 16, jpeg_encoder::ColorType::Rgb)
        .expect("encode");
    assert_eq!(decode(&plain).dimensions(), (32, 16));
}

// ---- decoding: refusals ----

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A PNG whose header claims `w` x `h` RGB pixels, with a tiny (empty) IDAT.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let bytes = png_claiming(100_000, 100_000);
    match decode_image(&bytes, "bomb.png", &limits()) {
        Err(CoreError::ImageTooLarge {
            what,
            width,
            height,
            ..
        }) => {
            assert_eq!(
                (what.as_str(), width, height),
                ("bomb.png", 100_000, 100_000)
            );
        }
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
    // Within the per-side limits but over the pixel count.
    let bytes = png_claiming(16_000, 16_000);
    assert!(matches!(
        decode_image(&bytes, "big", &limits()),
        Err(CoreError::ImageTooLarge { .. })
    ));
    // Custom limits apply to real images too.
    let small = DecodeLimits {
        max_width: 4,
        ..DecodeLimits::default()
    };
    let real = png_of(DynamicImage::ImageRgb8(pattern(5, 1)));
    assert!(matches!(
        decode_image(&real, "x", &small),
        Err(CoreError::ImageTooLarge { width: 5, .. })
    ));
    let tiny_alloc = DecodeLimits {
        max_alloc: 10,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_image(&real, "x", &tiny_alloc),
        Err(CoreError::ImageTooLarge { .. } | CoreError::BadImage { .. })
    ));
}

/// A GIF of a `screen` x `screen` screen whose one frame declares `frame` x `frame` pixels
/// and holds one (LZW: clear, pixel 0, end).
fn gif_with_frame(screen: u16, frame: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&screen.to_le_bytes());
    out.extend_from_slice(&screen.to_le_bytes());
    out.extend_from_slice(&[0x80, 0, 0]); // a global colour table of 2 entries
    out.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    out.push(0x2c); // image descriptor
    out.extend_from_slice(&[0, 0, 0, 0]); // left, top
    out.extend_from_slice(&frame.to_le_bytes());
    out.extend_from_slice(&frame.to_le_bytes());
    out.push(0); // no local colour table
    out.extend_from_slice(&[2, 2, 0x44, 0x01, 0]); // LZW minimum code size 2, one block
    out.push(0x3b);
    out
}

#[test]
fn the_decoded_pixels_count_against_the_allocation_limit() {
    // 64 x 64 RGBA is 16 KiB of pixels; a 120 x 120 frame needs 56 KiB more: each fits in
    // 64 KiB, both together do not.
    let limits = DecodeLimits {
        max_alloc: 64 * 1024,
        ..DecodeLimits::default()
    };
    let msg = assert_bad(decode_image(&gif_with_frame(64, 120), "frame.gif", &limits));
    assert!(msg.contains("memory limit"), "{msg}");
    // A frame that is the screen is no extra allocation.
    let img = decode_image(&gif_with_frame(1, 1), "pixel.gif", &limits).expect("decodes");
    assert_eq!(img.dimensions(), (1, 1));
}

#[test]
fn zero_sized_image_is_refused() {
    let msg = assert_bad(decode_image(&png_claiming(0, 5), "empty.png", &limits()));
    assert!(msg.contains("empty.png"), "{msg}");
}

#[test]
fn empty_truncated_and_garbage_bytes_are_bad_images() {
    let msg = assert_bad(decode_image(&[], "content image", &limits()));
    assert!(
        msg.contains("content image") && msg.contains("empty"),
        "{msg}"
    );

    let full = png_of(DynamicImage::ImageRgb8(pattern(40, 30)));
    for cut in [4, 20, full.len() / 2, full.len() - 20] {
        assert_bad(decode_image(&full[..cut], "cut.png", &limits()));
    }

    // Deterministic pseudo-random garbage (xorshift).
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let msg = assert_bad(decode_image(&garbage, "noise", &limits()));
    assert!(msg.contains("not recognised"), "{msg}");

    // A known signature followed by garbage.
    let mut fake = vec![0xff, 0xd8, 0xff];
    fake.extend_from_slice(&garbage[..100]);
    assert_bad(decode_image(&fake, "fake.jpg", &limits()));
}

#[test]
fn load_image_reads_files_and_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("in.png");
    fs::write(&path, png_of(DynamicImage::ImageRgb8(pattern(4, 3)))).expect("write");
    assert_eq!(load_image(&path, &limits()).expect("load"), pattern(4, 3));
    let missing = dir.path().join("missing.png");
    match load_image(&missing, &limits()) {
        Err(CoreError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io, got {other:?}"),
    }
    // The format comes from the content, not the name.
    let lying = dir.path().join("really_a_png.jpg");
    fs::copy(&path, &lying).expect("copy");
    assert_eq!(load_image(&lying, &limits()).expect("load"), pattern(4, 3));
}

// ---- resizing ----

#[test]
fn resize_keeps_the_aspect_ratio() {
    let img = RgbImage::new(1000, 10);
    assert_eq!(resize_to_max_side(&img, 100).dimensions(), (100, 1));
    let img = RgbImage::new(10, 1000);
    assert_eq!(resize_to_max_side(&img, 100).dimensions(), (1, 100));
    let img = RgbImage::new(1000, 1);
    assert_eq!(resize_to_max_side(&img, 100).dimensions(), (100, 1));
    let img = RgbImage::new(300, 200);
    assert_eq!(resize_to_max_side(&img, 512).dimensions(), (512, 341));
    assert_eq!(resize_to_max_side(&img, 0).dimensions(), (1, 1));
    assert_eq!(resize_exact(&img, 7, 5).dimensions(), (7, 5));
}

#[test]
fn resize_is_an_identical_copy_at_the_same_size() {
    let img = pattern(9, 4);
    assert_eq!(resize_to_max_side(&img, 9), img);
    assert_eq!(resize_exact(&img, 9, 4), img);
    let flat = RgbImage::from_pixel(20, 10, Rgb([40, 80, 120]));
    let small = resize_to_max_side(&flat, 7);
    assert!(small.pixels().all(|p| close(*p, [40, 80, 120], 1)));
}

// ---- encoding and saving ----

#[test]
fn encoders_produce_decodable_files() {
    let img = pattern(17, 9);
    assert_eq!(decode(&encode_png(&img).expect("png")), img);
    let flat = RgbImage::from_pixel(16, 8, Rgb([200, 100, 50]));
    let back = decode(&encode_jpeg(&flat, 95).expect("jpeg"));
    assert!(back.pixels().all(|p| close(*p, [200, 100, 50], 3)));
    // Out-of-range quality is clamped, not a panic.
    decode(&encode_jpeg(&flat, 0).expect("q0"));
    decode(&encode_jpeg(&flat, 255).expect("q255"));
}

#[test]
fn save_image_writes_png_and_jpeg_and_refuses_other_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = pattern(11, 6);
    let png_path = dir.path().join("out.png");
    save_image(&img, &png_path).expect("save png");
    assert_eq!(load_image(&png_path, &limits()).expect("load"), img);
    // Overwriting works.
    save_image(&pattern(3, 2), &png_path).expect("overwrite");
    assert_eq!(
        load_image(&png_path, &limits()).expect("load").dimensions(),
        (3, 2)
    );

    let flat = RgbImage::from_pixel(16, 8, Rgb([10, 200, 30]));
    for name in ["out.jpg", "OUT.JPEG"] {
        let p = dir.path().join(name);
        save_image(&flat, &p).expect("save jpeg");
        let bytes = fs::read(&p).expect("read");
        assert_eq!(&bytes[..2], &[0xff, 0xd8], "{name} is a JPEG");
        let back = load_image(&p, &limits()).expect("load");
        assert!(back.pixels().all(|px| close(*px, [10, 200, 30], 3)));
    }

    for name in ["out.bmp", "out", "out.webp"] {
        let p = dir.path().join(name);
        match save_image(&img, &p) {
            Err(CoreError::InvalidOption { option, reason }) => {
                assert_eq!(option, "output");
                assert!(reason.contains(".png or .jpg"), "{reason}");
            }
            other => panic!("{name}: expected InvalidOption, got {other:?}"),
        }
        assert!(!p.exists());
    }

    // A directory that does not exist: an Io error naming the path, no stray files.
    let p = dir.path().join("no_such_dir").join("x.png");
    assert!(matches!(save_image(&img, &p), Err(CoreError::Io { .. })));

    // No temporary files are left behind.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["OUT.JPEG", "out.jpg", "out.png"]);
}
