//! Pre-trained VGG weights: torchvision/timm `.safetensors` and Keras-exported `.onnx`.
//!
//! Only the convolutions of the feature stack are read; classifier heads are ignored. The
//! architecture (VGG-16 or VGG-19) follows from the number of convolutions and the input
//! convention ([`Preprocess`]) from the file's naming.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use stylefarm_core::CoreError;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use stylefarm_core::layers::VggArch;
use stylefarm_core::preprocess::Preprocess;

/// One 3x3 convolution's parameters.
#[derive(Debug, Clone)]
pub struct ConvParams {
    /// Kernel, (out, in, 3, 3), f32.
    pub weight: Tensor,
    /// Bias, (out,), f32.
    pub bias: Tensor,
}

/// The convolutions of a VGG feature stack and how the network wants its input.
#[derive(Debug, Clone)]
pub struct VggWeights {
    /// VGG-16 or VGG-19.
    pub arch: VggArch,
    /// Input convention.
    pub preprocess: Preprocess,
    /// Convolutions in order (13 or 16).
    pub convs: Vec<ConvParams>,
}

impl VggWeights {
    /// Loads a `.safetensors` (torchvision names) or `.onnx` (Keras export) file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("safetensors") => load_safetensors(path, device),
            Some("onnx") => load_onnx(path, device),
            _ => Err(bad(
                path,
                "expected a .safetensors (torchvision/timm VGG) or .onnx (Keras VGG) file",
            )),
        }
    }

    /// Builds weights from parameters already in memory, checking their shapes.
    pub fn from_convs(
        arch: VggArch,
        preprocess: Preprocess,
        convs: Vec<ConvParams>,
        origin: &Path,
    ) -> Result<Self> {
        if convs.len() != arch.num_convs() {
            return Err(bad(
                origin,
                &format!(
                    "{arch} needs {} convolutions, found {}",
                    arch.num_convs(),
                    convs.len()
                ),
            ));
        }
        let mut c_in = 3;
        for (i, conv) in convs.iter().enumerate() {
            let dims = conv.weight.dims();
            if dims.len() != 4 || dims[1] != c_in || dims[2] != 3 || dims[3] != 3 {
                return Err(bad(
                    origin,
                    &format!("convolution {i} has kernel shape {dims:?}, expected ({{out}}, {c_in}, 3, 3)"),
                ));
            }
            if conv.bias.dims() != [dims[0]] {
                return Err(bad(
                    origin,
                    &format!(
                        "convolution {i} has bias shape {:?}, expected ({},)",
                        conv.bias.dims(),
                        dims[0]
                    ),
                ));
            }
            c_in = dims[0];
        }
        Ok(Self {
            arch,
            preprocess,
            convs,
        })
    }
}

fn bad(path: &Path, reason: &str) -> EngineError {
    EngineError::BadWeights {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |err| {
        CoreError::Io {
            path: path.to_path_buf(),
            err,
        }
        .into()
    }
}

/// The `N` of a name ending in `features.N.weight` / `features.N.bias`.
fn torchvision_index(name: &str, suffix: &str) -> Option<usize> {
    let stem = name.strip_suffix(suffix)?;
    let n = stem.rsplit_once("features.")?.1;
    n.parse().ok()
}

/// Pairs torchvision-named kernels and biases by feature index and checks the indices are
/// those of a VGG's convolutions.
fn convs_from_torchvision(
    path: &Path,
    mut kernels: BTreeMap<usize, Tensor>,
    mut biases: BTreeMap<usize, Tensor>,
) -> Result<VggWeights> {
    let arch = VggArch::from_num_convs(kernels.len()).ok_or_else(|| {
        bad(
            path,
            &format!(
                "found {} `features.N.weight` convolution kernels; a VGG-16 has 13, a VGG-19 16",
                kernels.len()
            ),
        )
    })?;
    let expected: Vec<usize> = arch
        .ops()
        .iter()
        .enumerate()
        .filter(|(_, l)| l.kind == stylefarm_core::layers::LayerKind::Conv)
        .map(|(i, _)| i)
        .collect();
    let found: Vec<usize> = kernels.keys().copied().collect();
    if found != expected {
        return Err(bad(
            path,
            &format!("convolutions at features {found:?}, expected {arch}'s {expected:?}"),
        ));
    }
    let convs = expected
        .iter()
        .map(|i| {
            let weight = kernels
                .remove(i)
                .ok_or_else(|| bad(path, "missing kernel"))?;
            let bias = biases
                .remove(i)
                .ok_or_else(|| bad(path, &format!("missing features.{i}.bias")))?;
            Ok(ConvParams { weight, bias })
        })
        .collect::<Result<Vec<_>>>()?;
    VggWeights::from_convs(arch, Preprocess::Torchvision, convs, path)
}

fn load_safetensors(path: &Path, device: &Device) -> Result<VggWeights> {
    std::fs::metadata(path).map_err(io_err(path))?;
    // SAFETY: the file is mapped read-only and only read while loading; stylefarm never writes
    // weights files, and each tensor is copied out before the map is dropped.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
        .map_err(|e| bad(path, &format!("not a readable safetensors file ({e})")))?;
    let mut kernels = BTreeMap::new();
    let mut biases = BTreeMap::new();
    for (name, view) in st.tensors() {
        let (map, idx) = if let Some(i) = torchvision_index(&name, ".weight") {
            if view.shape().len() != 4 {
                continue;
            }
            (&mut kernels, i)
        } else if let Some(i) = torchvision_index(&name, ".bias") {
            (&mut biases, i)
        } else {
            continue;
        };
        let t = st
            .load(&name, device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| bad(path, &format!("cannot read tensor {name} ({e})")))?;
        map.insert(idx, t);
    }
    convs_from_torchvision(path, kernels, biases)
}

/// The few ONNX messages needed to read a graph's initializers (ONNX's field numbers); the
/// rest of the graph is skipped by prost.
mod onnx {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ModelProto {
        #[prost(message, optional, tag = "7")]
        pub(super) graph: Option<GraphProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct GraphProto {
        #[prost(message, repeated, tag = "5")]
        pub(super) initializer: Vec<TensorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub(super) dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub(super) data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub(super) float_data: Vec<f32>,
        #[prost(string, tag = "8")]
        pub(super) name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub(super) raw_data: Vec<u8>,
    }

    /// ONNX `TensorProto.DataType.FLOAT`.
    pub(super) const FLOAT: i32 = 1;
}

/// `(block, conv)` of a Keras layer name containing `block{b}_conv{n}`.
fn keras_conv(name: &str) -> Option<(u8, u8)> {
    let rest = &name[name.find("block")? + 5..];
    let (b, rest) = rest.split_once("_conv")?;
    let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((b.parse().ok()?, n.parse().ok()?))
}

fn onnx_tensor(path: &Path, t: onnx::TensorProto, device: &Device) -> Result<Tensor> {
    if t.data_type != onnx::FLOAT {
        return Err(bad(
            path,
            &format!(
                "initializer {} has ONNX data type {}, expected float",
                t.name, t.data_type
            ),
        ));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            bad(
                path,
                &format!("initializer {} has a negative dimension", t.name),
            )
        })?;
    let numel: usize = dims.iter().product();
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data
    };
    if data.len() != numel {
        return Err(bad(
            path,
            &format!(
                "initializer {} holds {} values for shape {dims:?}",
                t.name,
                data.len()
            ),
        ));
    }
    Ok(Tensor::from_vec(data, dims, device)?)
}

fn load_onnx(path: &Path, device: &Device) -> Result<VggWeights> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let model = onnx::ModelProto::decode(bytes.as_slice())
        .map_err(|e| bad(path, &format!("not a readable ONNX model ({e})")))?;
    drop(bytes);
    let graph = model
        .graph
        .ok_or_else(|| bad(path, "the ONNX model has no graph"))?;

    // A torchvision model exported to ONNX keeps its `features.N` names and conventions.
    if graph
        .initializer
        .iter()
        .any(|t| torchvision_index(&t.name, ".weight").is_some())
    {
        let mut kernels = BTreeMap::new();
        let mut biases = BTreeMap::new();
        for t in graph.initializer {
            if let Some(i) = torchvision_index(&t.name, ".weight").filter(|_| t.dims.len() == 4) {
                kernels.insert(i, onnx_tensor(path, t, device)?);
            } else if let Some(i) = torchvision_index(&t.name, ".bias") {
                biases.insert(i, onnx_tensor(path, t, device)?);
            }
        }
        return convs_from_torchvision(path, kernels, biases);
    }

    let mut kernels = BTreeMap::new();
    let mut biases = BTreeMap::new();
    for t in graph.initializer {
        let Some(key) = keras_conv(&t.name) else {
            continue;
        };
        match t.dims.len() {
            4 => {
                let name = t.name.clone();
                let w = onnx_tensor(path, t, device)?;
                // tf2onnx stores OIHW; a raw Keras kernel is HWIO.
                let w = match w.dims() {
                    [_, _, 3, 3] => w,
                    [3, 3, _, _] => w.permute((3, 2, 0, 1))?.contiguous()?,
                    d => {
                        return Err(bad(
                            path,
                            &format!("kernel {name} has shape {d:?}, not 3x3"),
                        ));
                    }
                };
                if kernels.insert(key, w).is_some() {
                    return Err(bad(
                        path,
                        &format!("two kernels for block{}_conv{}", key.0, key.1),
                    ));
                }
            }
            1 => {
                biases.insert(key, onnx_tensor(path, t, device)?);
            }
            _ => {}
        }
    }
    let arch = VggArch::from_num_convs(kernels.len()).ok_or_else(|| {
        bad(
            path,
            &format!(
                "found {} `block*_conv*` kernels; a Keras VGG16 has 13, a VGG19 16",
                kernels.len()
            ),
        )
    })?;
    let mut convs = Vec::with_capacity(kernels.len());
    for (b, &n) in arch.block_sizes().iter().enumerate() {
        for i in 1..=n {
            let key = (b as u8 + 1, i as u8);
            let weight = kernels.remove(&key).ok_or_else(|| {
                bad(
                    path,
                    &format!("missing kernel block{}_conv{}", key.0, key.1),
                )
            })?;
            let bias = biases.remove(&key).ok_or_else(|| {
                bad(
                    path,
                    &format!("missing bias of block{}_conv{}", key.0, key.1),
                )
            })?;
            convs.push(ConvParams { weight, bias });
        }
    }
    VggWeights::from_convs(arch, Preprocess::Caffe, convs, path)
}

/// Where a weights file came from, for messages.
pub fn describe(path: &Path, w: &VggWeights) -> String {
    format!(
        "{} ({}, {} input) from {}",
        w.arch,
        match w.preprocess {
            Preprocess::Torchvision => "torchvision",
            Preprocess::Caffe => "Keras/Caffe",
        },
        match w.preprocess {
            Preprocess::Torchvision => "RGB [0,1] mean/std",
            Preprocess::Caffe => "BGR 0..255 minus mean",
        },
        PathBuf::from(path).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_parsing() {
        assert_eq!(torchvision_index("features.28.weight", ".weight"), Some(28));
        assert_eq!(torchvision_index("model.features.3.bias", ".bias"), Some(3));
        assert_eq!(torchvision_index("classifier.0.weight", ".weight"), None);
        assert_eq!(
            keras_conv("functional_1/block4_conv2_1/convolution/ReadVariableOp:0"),
            Some((4, 2))
        );
        assert_eq!(
            keras_conv("functional_1/block1_conv1_1/Squeeze:0"),
            Some((1, 1))
        );
        assert_eq!(keras_conv("dense_1/MatMul"), None);
    }

    #[test]
    fn refuses_unknown_extension_and_missing_file() {
        let dev = Device::Cpu;
        let err = VggWeights::load(Path::new("/nonexistent/vgg.bin"), &dev).unwrap_err();
        assert!(err.to_string().contains(".safetensors"), "{err}");
        let err = VggWeights::load(Path::new("/nonexistent/vgg.onnx"), &dev).unwrap_err();
        assert!(
            matches!(err, EngineError::Core(CoreError::Io { .. })),
            "{err}"
        );
    }

    #[test]
    fn refuses_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["x.onnx", "x.safetensors"] {
            let p = dir.path().join(name);
            std::fs::write(&p, b"\xff\xfe not a model").unwrap();
            let err = VggWeights::load(&p, &Device::Cpu).unwrap_err();
            assert!(
                matches!(err, EngineError::BadWeights { .. }),
                "{name}: {err}"
            );
        }
    }
}
