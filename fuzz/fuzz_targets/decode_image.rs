//! `stylefarm_core::image_io::decode_image` with the default limits on arbitrary bytes: every
//! input is refused with an error or decoded to an image within the limits, never a panic,
//! and never more memory than the limits allow (`.ci/fuzz` runs it with libFuzzer's
//! `-malloc_limit_mb` and `-rss_limit_mb`, so a decompression bomb is a finding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stylefarm_core::image_io::{decode_image, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    if let Ok(img) = decode_image(data, "fuzz input", &limits) {
        let (width, height) = img.dimensions();
        assert!(width >= 1 && height >= 1, "an empty image was accepted");
        // The EXIF orientation may swap the sides; the limits are square and the product is
        // the same either way.
        assert!(
            width.max(height) <= limits.max_width.max(limits.max_height)
                && u64::from(width) * u64::from(height) <= limits.max_pixels,
            "{width}x{height} is over the limits"
        );
    }
});
