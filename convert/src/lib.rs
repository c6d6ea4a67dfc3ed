//! The one edge between the wire (`stylefarm_proto::v1`) and the domain (`stylefarm_core`):
//! render settings, losses, rectangles and the float32 payloads of lock-step tiles, each
//! converted here and nowhere else. On the way in every field is checked: a bad value becomes
//! a [`FieldError`] naming the field, which servers turn into INVALID_ARGUMENT.

use std::fmt;

use stylefarm_core::layers::{LayerName, Pooling};
use stylefarm_core::optim::Optimizer;
use stylefarm_core::settings::{self as domain, Init};
use stylefarm_core::tiles::Rect;
use stylefarm_core::{CoreError, Preprocess};

use stylefarm_proto::v1;

/// A field of a request that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request, e.g. `spec.settings.style_weight`.
    pub field: String,
    /// Why, in words.
    pub reason: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// The domain's error for an option as a field error under `prefix` (`--style-weight` becomes
/// `{prefix}.style_weight`).
pub fn field_error(prefix: &str, e: CoreError) -> FieldError {
    match e {
        CoreError::InvalidOption { option, reason } => {
            FieldError::new(format!("{prefix}.{}", option.replace('-', "_")), reason)
        }
        CoreError::UnknownLayer { name, reason } => FieldError::new(
            format!("{prefix}.layers"),
            format!("unknown layer `{name}`: {reason}"),
        ),
        other => FieldError::new(prefix, other.to_string()),
    }
}

fn layers(
    prefix: &str,
    field: &str,
    names: &[String],
    default: &[LayerName],
) -> Result<Vec<LayerName>, FieldError> {
    if names.is_empty() {
        return Ok(default.to_vec());
    }
    names
        .iter()
        .map(|n| {
            n.parse::<LayerName>()
                .map_err(|e| FieldError::new(format!("{prefix}.{field}"), e.to_string()))
        })
        .collect()
}

/// Wire settings to checked domain settings, for a job with `num_styles` style images.
/// `prefix` names the message in errors (e.g. `spec.settings`).
pub fn settings_from_proto(
    s: &v1::RenderSettings,
    num_styles: usize,
    prefix: &str,
) -> Result<domain::RenderSettings, FieldError> {
    let d = domain::RenderSettings::default();
    let optimizer = match v1::Optimizer::try_from(s.optimizer) {
        Ok(v1::Optimizer::Unspecified | v1::Optimizer::Lbfgs) => Optimizer::Lbfgs {
            history: s.lbfgs_history.map_or(100, |h| h as usize),
            strong_wolfe: s.line_search,
        },
        Ok(v1::Optimizer::Adam) => Optimizer::Adam {
            learning_rate: s.learning_rate.unwrap_or(10.0),
        },
        Err(_) => {
            return Err(FieldError::new(
                format!("{prefix}.optimizer"),
                format!("unknown value {}", s.optimizer),
            ))
        }
    };
    if let Optimizer::Lbfgs { history: 0, .. } = optimizer {
        return Err(FieldError::new(
            format!("{prefix}.lbfgs_history"),
            "must be at least 1",
        ));
    }
    let init = match v1::Init::try_from(s.init) {
        Ok(v1::Init::Unspecified | v1::Init::Random) => Init::Random,
        Ok(v1::Init::Content) => Init::Content,
        Ok(v1::Init::Image) => Init::Image,
        Err(_) => {
            return Err(FieldError::new(
                format!("{prefix}.init"),
                format!("unknown value {}", s.init),
            ))
        }
    };
    let pooling = match v1::Pooling::try_from(s.pooling) {
        Ok(v1::Pooling::Unspecified | v1::Pooling::Max) => Pooling::Max,
        Ok(v1::Pooling::Avg) => Pooling::Avg,
        Err(_) => {
            return Err(FieldError::new(
                format!("{prefix}.pooling"),
                format!("unknown value {}", s.pooling),
            ))
        }
    };
    let settings = domain::RenderSettings {
        image_size: s.image_size.unwrap_or(d.image_size),
        num_iterations: s.num_iterations.unwrap_or(d.num_iterations),
        optimizer,
        content_weight: s.content_weight.unwrap_or(d.content_weight),
        style_weight: s.style_weight.unwrap_or(d.style_weight),
        tv_weight: s.tv_weight.unwrap_or(d.tv_weight),
        content_layers: layers(
            prefix,
            "content_layers",
            &s.content_layers,
            &d.content_layers,
        )?,
        style_layers: layers(prefix, "style_layers", &s.style_layers, &d.style_layers)?,
        style_blend_weights: (!s.style_blend_weights.is_empty())
            .then(|| s.style_blend_weights.clone()),
        style_scale: s.style_scale.unwrap_or(d.style_scale),
        init,
        seed: s.seed,
        original_colors: s.original_colors,
        pooling,
        save_iter: 0,
    };
    settings
        .validate(num_styles)
        .map_err(|e| field_error(prefix, e))?;
    Ok(settings)
}

/// Domain settings to the wire (every optional field set).
pub fn settings_to_proto(s: &domain::RenderSettings) -> v1::RenderSettings {
    let (optimizer, learning_rate, line_search, lbfgs_history) = match s.optimizer {
        Optimizer::Lbfgs {
            history,
            strong_wolfe,
        } => (
            v1::Optimizer::Lbfgs,
            None,
            strong_wolfe,
            Some(history as u32),
        ),
        Optimizer::Adam { learning_rate } => {
            (v1::Optimizer::Adam, Some(learning_rate), false, None)
        }
    };
    v1::RenderSettings {
        image_size: Some(s.image_size),
        num_iterations: Some(s.num_iterations),
        optimizer: optimizer as i32,
        learning_rate,
        line_search,
        lbfgs_history,
        content_weight: Some(s.content_weight),
        style_weight: Some(s.style_weight),
        tv_weight: Some(s.tv_weight),
        content_layers: s.content_layers.iter().map(ToString::to_string).collect(),
        style_layers: s.style_layers.iter().map(ToString::to_string).collect(),
        style_blend_weights: s.style_blend_weights.clone().unwrap_or_default(),
        style_scale: Some(s.style_scale),
        init: match s.init {
            Init::Random => v1::Init::Random,
            Init::Content => v1::Init::Content,
            Init::Image => v1::Init::Image,
        } as i32,
        seed: s.seed,
        original_colors: s.original_colors,
        pooling: match s.pooling {
            Pooling::Max => v1::Pooling::Max,
            Pooling::Avg => v1::Pooling::Avg,
        } as i32,
    }
}

/// A network's input convention as the wire names it (a shard's hello, a worker's models).
pub fn preprocess_to_proto(p: Preprocess) -> &'static str {
    match p {
        Preprocess::Torchvision => "torchvision",
        Preprocess::Caffe => "caffe",
    }
}

/// The input convention the wire names `name`, if it is one.
pub fn preprocess_from_proto(name: &str) -> Option<Preprocess> {
    [Preprocess::Torchvision, Preprocess::Caffe]
        .into_iter()
        .find(|&p| preprocess_to_proto(p) == name)
}

/// Losses to the wire.
pub fn losses_to_proto(l: &domain::Losses) -> v1::Losses {
    v1::Losses {
        content: l.content,
        style: l.style,
        tv: l.tv,
        total: l.total,
    }
}

/// A rectangle to the wire.
pub fn rect_to_proto(r: Rect) -> v1::Rect {
    v1::Rect {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    }
}

/// A rectangle from the wire (any four numbers are a rectangle; whether it fits an image is
/// the receiver's check).
pub fn rect_from_proto(r: &v1::Rect) -> Rect {
    Rect {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    }
}

/// Little-endian float32 bytes, as lock-step tiles carry pixels, Gram matrices and gradients.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The float32 values of little-endian bytes (a trailing partial value is dropped).
pub fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_names_round_trip() {
        for p in [Preprocess::Torchvision, Preprocess::Caffe] {
            assert_eq!(preprocess_from_proto(preprocess_to_proto(p)), Some(p));
        }
        assert_eq!(preprocess_to_proto(Preprocess::Caffe), "caffe");
        assert_eq!(preprocess_from_proto("bgr"), None);
    }

    #[test]
    fn settings_round_trip_and_defaults() {
        let s = domain::RenderSettings {
            image_size: 300,
            style_weight: 1e3,
            init: Init::Content,
            pooling: Pooling::Avg,
            style_blend_weights: Some(vec![1.0, 2.0]),
            ..domain::RenderSettings::default()
        };
        let back = settings_from_proto(&settings_to_proto(&s), 2, "spec.settings").unwrap();
        assert_eq!(back, s);
        let d = settings_from_proto(&v1::RenderSettings::default(), 1, "spec.settings").unwrap();
        assert_eq!(d, domain::RenderSettings::default());
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                v1::RenderSettings {
                    style_weight: Some(f32::NAN),
                    ..Default::default()
                },
                "spec.settings.style_weight",
            ),
            (
                v1::RenderSettings {
                    image_size: Some(0),
                    ..Default::default()
                },
                "spec.settings.image_size",
            ),
            (
                v1::RenderSettings {
                    style_layers: vec!["relu9_9".into()],
                    ..Default::default()
                },
                "spec.settings.style_layers",
            ),
            (
                v1::RenderSettings {
                    optimizer: 42,
                    ..Default::default()
                },
                "spec.settings.optimizer",
            ),
            (
                v1::RenderSettings {
                    lbfgs_history: Some(0),
                    ..Default::default()
                },
                "spec.settings.lbfgs_history",
            ),
            (
                v1::RenderSettings {
                    style_blend_weights: vec![1.0, 1.0],
                    ..Default::default()
                },
                "spec.settings.style_blend_weights",
            ),
        ];
        for (s, field) in cases {
            let e = settings_from_proto(&s, 1, "spec.settings").unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
