//! Images as network-input tensors and back: the one image <-> tensor module. The pixel
//! mapping itself (channel order, mean and scale) is [`stylefarm_core::image_io`]'s
//! `image_to_network`/`network_to_image`; this adds the tensor's shape, `(1, 3, H, W)`.

use candle_core::{DType, Device, Tensor};
use stylefarm_core::image_io::{image_to_network, network_to_image, RgbImage};
use stylefarm_core::Preprocess;

use crate::error::{EngineError, Result};

/// The network-input tensor of an image: shape `(1, 3, H, W)`, `f32`, where network channel
/// `c` holds `pre.to_network(c, p)` with `p` the pixel's RGB channel `pre.rgb_channel(c)`.
///
/// # Errors
/// [`EngineError::Candle`] if the tensor cannot be made on `device`.
pub fn image_to_tensor(img: &RgbImage, pre: Preprocess, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data = image_to_network(img, pre);
    Ok(Tensor::from_vec(
        data,
        (1, 3, h as usize, w as usize),
        device,
    )?)
}

/// The image of a network-input tensor, the inverse of [`image_to_tensor`]: accepts shape
/// `(1, 3, H, W)` or `(3, H, W)` of any float dtype on any device; values are mapped back
/// to pixels, clamped to `[0, 255]` and rounded to nearest.
///
/// # Errors
/// [`EngineError::Candle`] for another shape or a failed copy.
pub fn tensor_to_image(t: &Tensor, pre: Preprocess) -> Result<RgbImage> {
    let (h, w) = match *t.dims() {
        [1, 3, h, w] | [3, h, w] => (h, w),
        ref other => {
            return Err(candle_core::Error::Msg(format!(
                "expected an image tensor of shape (1, 3, H, W) or (3, H, W), got {other:?}"
            ))
            .into())
        }
    };
    let too_big = || {
        EngineError::from(candle_core::Error::Msg(format!(
            "an image tensor of {h}x{w} pixels is too large for an image"
        )))
    };
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| too_big())?,
        u32::try_from(h).map_err(|_| too_big())?,
    );
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    network_to_image(&data, w32, h32, pre).ok_or_else(too_big)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use stylefarm_core::image_io::random_image;

    #[test]
    fn tensor_round_trip_is_exact_on_non_square_images() {
        for pre in [Preprocess::Torchvision, Preprocess::Caffe] {
            for (w, h) in [(7, 3), (3, 7), (1, 1)] {
                let img = random_image(w, h, u64::from(w * 10 + h));
                let t = image_to_tensor(&img, pre, &Device::Cpu).expect("to tensor");
                assert_eq!(t.dims(), &[1, 3, h as usize, w as usize]);
                assert_eq!(t.dtype(), DType::F32);
                let back = tensor_to_image(&t, pre).expect("to image");
                assert_eq!(back, img, "{pre:?} {w}x{h}");
                // Also from a (3, H, W) tensor.
                let back3 = tensor_to_image(&t.squeeze(0).expect("squeeze"), pre).expect("3d");
                assert_eq!(back3, img);
            }
        }
    }

    #[test]
    fn tensor_layout_is_nchw_with_the_preprocess_channel_order() {
        let mut img = RgbImage::new(7, 3);
        img.put_pixel(5, 1, Rgb([10, 20, 30]));
        for pre in [Preprocess::Torchvision, Preprocess::Caffe] {
            let t = image_to_tensor(&img, pre, &Device::Cpu).expect("to tensor");
            for c in 0..3 {
                let v = t
                    .get(0)
                    .and_then(|t| t.get(c))
                    .and_then(|t| t.get(1))
                    .and_then(|t| t.get(5))
                    .and_then(|t| t.to_scalar::<f32>())
                    .expect("index");
                let rgb = [10.0, 20.0, 30.0][pre.rgb_channel(c)];
                assert_eq!(v, pre.to_network(c, rgb), "{pre:?} channel {c}");
            }
        }
        // Caffe is BGR with the mean subtracted: channel 0 is blue.
        let t = image_to_tensor(&img, Preprocess::Caffe, &Device::Cpu).expect("to tensor");
        let v = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("vec");
        let at = |c: usize, y: usize, x: usize| v[c * 21 + y * 7 + x];
        assert!((at(0, 1, 5) - (30.0 - 103.939)).abs() < 1e-4);
        assert!((at(2, 1, 5) - (10.0 - 123.68)).abs() < 1e-4);
        assert!((at(0, 0, 0) + 103.939).abs() < 1e-4);
    }

    #[test]
    fn tensor_to_image_clamps_rounds_and_checks_the_shape() {
        let pre = Preprocess::Caffe;
        // Channel 0 (blue): 1000 -> 255; channel 1 (green): -1000 -> 0; channel 2 (red) 0.6 over.
        let data = vec![1000.0f32, -1000.0, 0.6 - 123.68];
        let t = Tensor::from_vec(data, (1, 3, 1, 1), &Device::Cpu).expect("tensor");
        let img = tensor_to_image(&t, pre).expect("image");
        assert_eq!(*img.get_pixel(0, 0), Rgb([1, 0, 255]));
        let nan = Tensor::from_vec(vec![f32::NAN; 3], (3, 1, 1), &Device::Cpu).expect("t");
        assert_eq!(
            tensor_to_image(&nan, pre).expect("nan").get_pixel(0, 0).0,
            [0; 3]
        );
        let wrong = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).expect("t");
        assert!(tensor_to_image(&wrong, pre).is_err());
        let wrong = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).expect("t");
        assert!(tensor_to_image(&wrong, pre).is_err());
        // f64 tensors are accepted too.
        let t64 = Tensor::zeros((1, 3, 2, 5), DType::F64, &Device::Cpu).expect("t");
        assert_eq!(
            tensor_to_image(&t64, pre).expect("f64").dimensions(),
            (5, 2)
        );
    }
}
