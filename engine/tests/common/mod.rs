//! Helpers shared by the engine's integration tests: golden files and comparisons.
//!
//! The golden cases run on `$STYLEFARM_TEST_DEVICE` (`cpu` unless set; `cuda` with a build
//! with `--features cuda`, as `bench/gpu-check.sh` runs them), with the golden files from
//! `$STYLEFARM_TEST_DATA` when set (a copy of `tests/data` next to prebuilt test binaries).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use stylefarm_core::layers::LayerName;
use stylefarm_core::layers::Pooling;
use stylefarm_core::settings::{Losses, TermWeights};
use stylefarm_engine::objective::{Objective, StyleTargets};
use stylefarm_engine::vgg::Vgg;
use stylefarm_engine::weights::VggWeights;

pub fn data(name: &str) -> PathBuf {
    std::env::var_os("STYLEFARM_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"))
        .join(name)
}

/// The device the golden cases run on: `$STYLEFARM_TEST_DEVICE`, the CPU when unset.
pub fn device() -> Device {
    let kind = std::env::var("STYLEFARM_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let kind: stylefarm_engine::device::DeviceKind = kind
        .parse()
        .unwrap_or_else(|e| panic!("STYLEFARM_TEST_DEVICE: {e}"));
    stylefarm_engine::device::open(kind).unwrap_or_else(|e| panic!("{e}"))
}

/// A golden case: its settings (from the json) and tensors (from the safetensors file).
pub struct Case {
    pub name: String,
    pub json: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Case {
    pub fn load(stem: &str, name: &str) -> Case {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data(&format!("{stem}.json"))).unwrap()).unwrap();
        let tensors =
            candle_core::safetensors::load(data(&format!("{stem}.safetensors")), &device())
                .unwrap();
        Case {
            name: name.to_string(),
            json: json["cases"][name].clone(),
            tensors,
        }
    }

    pub fn names(stem: &str) -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data(&format!("{stem}.json"))).unwrap()).unwrap();
        json["cases"].as_object().unwrap().keys().cloned().collect()
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        self.tensors
            .get(&format!("{}.{key}", self.name))
            .unwrap_or_else(|| panic!("golden tensor {}.{key} missing", self.name))
            .clone()
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        self.tensor(key)
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    }

    pub fn scalar(&self, key: &str) -> f64 {
        self.f64s(key)[0]
    }

    pub fn layers(&self, key: &str) -> Vec<LayerName> {
        self.json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect()
    }

    pub fn pooling(&self) -> Pooling {
        self.json["pooling"].as_str().unwrap().parse().unwrap()
    }

    pub fn weights(&self) -> TermWeights {
        let f = |k: &str| self.json[k].as_f64().unwrap() as f32;
        TermWeights {
            content: f("alpha"),
            style: f("beta"),
            tv: f("tv_weight"),
        }
    }

    /// Style tensors with their blend weights.
    pub fn styles(&self) -> Vec<(Tensor, f32)> {
        self.json["style_blend_weights"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (
                    self.tensor(&format!("style{i}")),
                    w.as_f64().unwrap() as f32,
                )
            })
            .collect()
    }

    /// Our objective and gradient at the case's `x` with `vgg`.
    pub fn evaluate(&self, vgg: &Vgg) -> (Losses, Vec<f32>) {
        let vgg = vgg.with_pooling(self.pooling());
        let targets =
            StyleTargets::compute(&vgg, &self.styles(), &self.layers("style_layers")).unwrap();
        let obj = Objective::new(
            &vgg,
            &self.tensor("content"),
            &self.layers("content_layers"),
            &targets,
            self.weights(),
        )
        .unwrap();
        let x: Vec<f32> = self.tensor("x").flatten_all().unwrap().to_vec1().unwrap();
        let mut grad = vec![0.0; x.len()];
        let losses = obj.evaluate(&x, &mut grad).unwrap();
        let forward_only = obj.losses(&x).unwrap();
        assert_eq!(
            losses, forward_only,
            "{}: forward-only losses differ",
            self.name
        );
        (losses, grad)
    }
}

pub fn load_vgg(path: &std::path::Path) -> Vgg {
    let w = VggWeights::load(path, &device())
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    Vgg::new(w, Pooling::Max).unwrap()
}

pub fn rel_err(ours: f64, want: f64) -> f64 {
    (ours - want).abs() / want.abs().max(1e-300)
}

/// (cosine, relative L2 error) of `ours` against `want`.
pub fn compare(ours: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(ours.len(), want.len());
    let (mut dot, mut n1, mut n2, mut diff) = (0.0, 0.0, 0.0, 0.0);
    for (&a, &b) in ours.iter().zip(want) {
        let a = f64::from(a);
        dot += a * b;
        n1 += a * a;
        n2 += b * b;
        diff += (a - b) * (a - b);
    }
    (dot / (n1.sqrt() * n2.sqrt()), (diff / n2).sqrt())
}

/// Asserts losses and gradient of a golden case within `tol` relative.
pub fn check_case(case: &Case, vgg: &Vgg, tol: f64) {
    let (losses, grad) = case.evaluate(vgg);
    let n = &case.name;
    for (what, ours, key) in [
        ("content", losses.content, "j_content"),
        ("style", losses.style, "j_style"),
        ("tv", losses.tv, "tv"),
        ("total", losses.total, "total"),
    ] {
        let want = case.scalar(key);
        let e = rel_err(ours, want);
        assert!(
            e <= tol,
            "{n}: {what} {ours} vs golden {want} (relative error {e:.2e})"
        );
    }
    for (l, (ours, want)) in losses
        .style_layers
        .iter()
        .zip(case.f64s("j_style_layers"))
        .enumerate()
    {
        let e = rel_err(*ours, want);
        assert!(e <= tol, "{n}: style layer {l}: {ours} vs {want} ({e:.2e})");
    }
    let (cos, rel) = compare(&grad, &case.f64s("grad"));
    eprintln!("{n}: gradient cosine {cos:.9}, relative L2 {rel:.2e}");
    assert!(cos >= 0.99999, "{n}: gradient cosine {cos}");
    assert!(
        rel <= tol,
        "{n}: gradient relative L2 error {rel:.2e} > {tol:.0e}"
    );
}
