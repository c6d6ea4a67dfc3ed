//! Where the engine runs: the CPU, or one NVIDIA GPU when the crate is built with the `cuda`
//! feature. The network, the objective and the gradient are the same code on both (see
//! [`crate::vgg`] and [`crate::ops`]); this module only names, opens and describes a device.
//!
//! A CUDA device is opened with matrix products in full float32 (no TF32): the Gram matrices
//! and the gradient must match the CPU's within its tolerances.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use stylefarm_core::CoreError;

use crate::error::Result;

/// A device asked for by name: `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// The CPU, on rayon's pool.
    #[default]
    Cpu,
    /// The NVIDIA GPU with this ordinal.
    Cuda(usize),
}

/// GPUs one worker may name: an ordinal beyond this is refused as a typo before any driver call.
const MAX_ORDINAL: usize = 63;

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a device: use cpu, cuda or cuda:N");
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                // Plain digits only: "cuda:+1" and "cuda:01" are refused rather than read as 1.
                match n.parse::<usize>() {
                    Ok(k) if k <= MAX_ORDINAL && k.to_string() == n => Ok(Self::Cuda(k)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What a GPU says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The driver's name for it, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Device memory free now, in bytes.
    pub free_bytes: u64,
    /// Device memory in all, in bytes.
    pub total_bytes: u64,
}

fn refuse(reason: String) -> crate::EngineError {
    CoreError::InvalidOption {
        option: "device",
        reason,
    }
    .into()
}

/// Whether this build has the CUDA device path.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens the device `kind` names.
///
/// # Errors
/// For `cuda`: a build without the `cuda` feature, no driver, no GPU with that ordinal, or a
/// GPU the driver cannot open; each as one sentence. Never panics, even where the CUDA
/// libraries themselves would.
pub fn open(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(ordinal) => open_cuda(ordinal),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(refuse(format!(
        "cuda:{ordinal} was asked for, but this build has no CUDA support (build it with --features cuda)"
    )))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    use candle_core::cuda::cudarc::driver::CudaContext;
    // The driver calls may panic inside cudarc when the driver is unusable: catch that quietly
    // (this runs at start-up, before other threads could miss their panic messages).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| {
        let count = CudaContext::device_count().map_err(|e| {
            format!("the CUDA driver does not answer ({e}): is there an NVIDIA GPU and its driver?")
        })?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(format!(
                "cuda:{ordinal} was asked for, but the CUDA driver sees {count} GPU(s)"
            ));
        }
        Device::new_cuda(ordinal).map_err(|e| format!("could not open GPU cuda:{ordinal}: {e}"))
    });
    std::panic::set_hook(hook);
    match opened {
        Ok(Ok(device)) => {
            candle_core::cuda::set_gemm_reduced_precision_f32(false);
            Ok(device)
        }
        Ok(Err(reason)) => Err(refuse(reason)),
        Err(_) => Err(refuse(format!(
            "cuda:{ordinal} was asked for, but the CUDA driver could not be loaded: is there an NVIDIA GPU and its driver?"
        ))),
    }
}

/// The name and memory of the GPU behind `device`; `None` for the CPU, or when the driver
/// does not say.
pub fn gpu_info(device: &Device) -> Option<GpuInfo> {
    cuda_info(device)
}

#[cfg(feature = "cuda")]
fn cuda_info(device: &Device) -> Option<GpuInfo> {
    let Device::Cuda(d) = device else {
        return None;
    };
    let context = d.cuda_stream().context().clone();
    let name = context.name().ok()?;
    let (free, total) = context.mem_get_info().ok()?;
    Some(GpuInfo {
        name,
        free_bytes: free as u64,
        total_bytes: total as u64,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_info(_: &Device) -> Option<GpuInfo> {
    None
}

/// The speed of `vgg` on its device, in input pixels per second: one forward pass of a
/// `side` x `side` image to relu5_1 (the default style layers' deepest) and the backward pass
/// to the input, timed after one untimed pass on a GPU (which loads its kernels then).
///
/// # Errors
/// A side too small for relu5_1 (under 16), or a failed tensor operation.
pub fn measure_speed(vgg: &crate::vgg::Vgg, side: usize) -> Result<f64> {
    use stylefarm_core::layers::{LayerKind, LayerName};
    let deepest = vgg.position(LayerName::new(LayerKind::Relu, 5, 1))?;
    let x = candle_core::Tensor::rand(-100f32, 100f32, (1, 3, side, side), vgg.device())?;
    let pass = || -> Result<f32> {
        let acts = vgg.forward(&x, deepest, &|p| p == deepest, true, &|| false)?;
        let out = acts.get(deepest).ok_or_else(|| {
            candle_core::Error::Msg("the forward pass kept no relu5_1 output".into())
        })?;
        let grad = vgg.backward(&acts, vec![(deepest, out.ones_like()?)], &|| false)?;
        // Reading a value back waits for the device to finish.
        Ok(grad.sum_all()?.to_scalar::<f32>()?)
    };
    if !vgg.device().is_cpu() {
        pass()?;
    }
    let started = std::time::Instant::now();
    pass()?;
    Ok((side * side) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, kind) in [
            ("cpu", DeviceKind::Cpu),
            ("cuda", DeviceKind::Cuda(0)),
            ("cuda:0", DeviceKind::Cuda(0)),
            ("cuda:3", DeviceKind::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceKind>(), Ok(kind), "{s}");
        }
        assert_eq!(DeviceKind::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            DeviceKind::Cpu.to_string().parse::<DeviceKind>(),
            Ok(DeviceKind::Cpu)
        );
        for bad in [
            "",
            "gpu",
            "CUDA",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda:01",
            "cuda:64",
            "cuda:x",
            "cuda:99999999999999999999",
            "cpu:0",
        ] {
            let err = bad.parse::<DeviceKind>().unwrap_err();
            assert!(err.contains("use cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn speed_is_measured_on_the_tiny_network() {
        let vgg = crate::test_support::tiny_vgg();
        let speed = measure_speed(&vgg, 32).unwrap();
        assert!(speed.is_finite() && speed > 0.0, "{speed}");
        assert!(measure_speed(&vgg, 8).is_err(), "relu5_1 needs 16 pixels");
    }

    #[test]
    fn the_cpu_opens_and_is_no_gpu() {
        let device = open(DeviceKind::Cpu).unwrap();
        assert!(device.is_cpu());
        assert_eq!(gpu_info(&device), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_one_sentence() {
        let err = open(DeviceKind::Cuda(1)).unwrap_err().to_string();
        assert!(err.contains("cuda:1"), "{err}");
        assert!(err.contains("--features cuda"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
