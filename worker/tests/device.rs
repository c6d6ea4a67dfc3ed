//! The worker binary's `--device`: a device it cannot use is refused in one sentence with a
//! non-zero exit, before it loads weights or reaches a coordinator.

use std::process::Command;

fn worker(args: &[&str], env: Option<(&str, &str)>) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stylefarm-worker"));
    cmd.args(["--coordinator", "http://127.0.0.1:9"])
        .args(args)
        .env_remove("STYLEFARM_DEVICE");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the worker binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_one_sentence_and_a_failure() {
    for (args, env) in [
        (&["--device", "cuda"][..], None),
        (&["--device", "cuda:1"][..], None),
        (&[][..], Some(("STYLEFARM_DEVICE", "cuda"))),
    ] {
        let (code, stderr) = worker(args, env);
        assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no CUDA support"), "{stderr}");
        assert!(stderr.contains("--features cuda"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_unknown_device_is_refused_by_name() {
    for device in ["gpu", "cuda:x", "cuda:64"] {
        let (code, stderr) = worker(&["--device", device], None);
        assert_eq!(code, Some(2), "{device}: {stderr}");
        assert!(stderr.contains("use cpu, cuda or cuda:N"), "{stderr}");
    }
}
