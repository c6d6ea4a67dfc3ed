//! The coordinator's own tasks: putting a job's result together from the results of the
//! tasks it depends on — a labelled contact sheet of a sweep's points — and driving tiles in
//! lock step ([`crate::lockstep`]).
//!
//! One loop waits for assemble tasks to become ready ([`Signals::assembly_ready`], and once at
//! start for those a restart left behind), reads their inputs from the blob store, decodes,
//! draws and encodes on a blocking thread (never on the async runtime), stores the PNG as a
//! blob and finishes the task through the scheduler. An assembly that cannot be done fails its
//! task, and with it the job, with the reason.

use std::collections::HashSet;
use std::sync::Arc;

use stylefarm_core::image_io::{decode_image, encode_png, DecodeLimits, RgbImage};
use stylefarm_core::sheet::contact_sheet;
use stylefarm_proto::ids::TaskId;
use stylefarm_proto::v1::{self, task_spec::Part};
use tokio::sync::Mutex;

use crate::blobs::{BlobHash, BlobStore};
use crate::error::{CoordinatorError, Result};
use crate::lockstep::Lockstep;
use crate::scheduler::{Assembly, TaskKind};
use crate::state::{Signals, StateHandle};

/// Longest side of one image on a contact sheet.
const SHEET_CELL: u32 = 256;

/// Runs assemble tasks until shutdown.
pub(crate) async fn assembler_loop(
    state: StateHandle,
    blobs: Arc<BlobStore>,
    signals: Arc<Signals>,
    lockstep: Arc<Lockstep>,
) {
    let running: Arc<Mutex<HashSet<TaskId>>> = Arc::default();
    loop {
        let ready = match state.call(|c| Ok(c.sched.ready_assemblies())).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the assembler stops");
                return;
            }
        };
        for assembly in ready {
            if !running.lock().await.insert(assembly.task) {
                continue;
            }
            let (state, blobs, running) = (state.clone(), blobs.clone(), running.clone());
            let (signals, lockstep) = (signals.clone(), lockstep.clone());
            tokio::spawn(async move {
                let task = assembly.task;
                run(&state, &blobs, &signals, &lockstep, assembly).await;
                running.lock().await.remove(&task);
            });
        }
        tokio::select! {
            () = signals.assembly_ready.notified() => {}
            () = signals.shutdown_requested() => return,
        }
    }
}

/// Assembles one task and reports the outcome to the scheduler.
async fn run(
    state: &StateHandle,
    blobs: &BlobStore,
    signals: &Signals,
    lockstep: &Lockstep,
    assembly: Assembly,
) {
    let (task, job) = (assembly.task, assembly.job);
    let outcome = match assembly.kind {
        TaskKind::Driver => crate::lockstep::run(state, blobs, lockstep, signals, assembly)
            .await
            .map(|(result, losses)| (result, Some(losses))),
        TaskKind::Sheet => assemble_sheet(blobs, assembly)
            .await
            .map(|result| (result, None)),
        TaskKind::Render | TaskKind::Statistics | TaskKind::Shard => Err(
            CoordinatorError::Internal("a worker's task is not the coordinator's to run".into()),
        ),
    };
    match &outcome {
        Ok((b, _)) => {
            tracing::info!(job_id = %job, task_id = %task, sha256 = %b.sha256, "assembled")
        }
        Err(e) => tracing::warn!(job_id = %job, task_id = %task, error = %e, "assembly failed"),
    }
    let outcome = outcome.map_err(|e| format!("assembling the result failed: {e}"));
    if let Err(e) = state
        .call(move |c| c.apply(|s, now| s.assembled(task, outcome, now)))
        .await
    {
        tracing::error!(job_id = %job, task_id = %task, error = %e, "cannot record an assembly");
    }
}

/// Puts a contact sheet together from the results of the sweep points it depends on.
async fn assemble_sheet(blobs: &BlobStore, assembly: Assembly) -> Result<v1::BlobRef> {
    if assembly.inputs.len() != assembly.spec.depends_on.len() {
        return Err(CoordinatorError::Internal(format!(
            "{} of the {} results to assemble are missing",
            assembly.spec.depends_on.len() - assembly.inputs.len(),
            assembly.spec.depends_on.len()
        )));
    }
    let mut encoded = Vec::with_capacity(assembly.inputs.len());
    for (_, result) in &assembly.inputs {
        let hash = BlobHash::parse(&result.sha256, "result.sha256")?;
        encoded.push(blobs.read_all(&hash).await?);
    }
    let job_spec = assembly.job_spec;
    let specs: Vec<v1::TaskSpec> = assembly.inputs.into_iter().map(|(s, _)| s).collect();
    let png = tokio::task::spawn_blocking(move || sheet(&job_spec, &specs, &encoded))
        .await
        .map_err(|e| CoordinatorError::Internal(format!("the assembly thread failed: {e}")))??;
    blobs.put(&png).await
}

fn decode_all(encoded: &[Vec<u8>], specs: &[v1::TaskSpec]) -> Result<Vec<RgbImage>> {
    let limits = DecodeLimits::default();
    encoded
        .iter()
        .zip(specs)
        .map(|(bytes, spec)| {
            decode_image(
                bytes,
                &format!("the result of {}", spec.output_name),
                &limits,
            )
            .map_err(|e| CoordinatorError::Internal(e.to_string()))
        })
        .collect()
}

/// A contact sheet of the sweep points' results, each labelled with its values in the order
/// of the job's sweeps.
fn sheet(job: &v1::JobSpec, specs: &[v1::TaskSpec], encoded: &[Vec<u8>]) -> Result<Vec<u8>> {
    let images = decode_all(encoded, specs)?;
    let items: Vec<(RgbImage, Vec<String>)> = images
        .into_iter()
        .zip(specs)
        .map(|(img, spec)| {
            let label: Vec<String> = match &spec.part {
                Some(Part::Sweep(p)) => job
                    .sweeps
                    .iter()
                    .filter_map(|s| {
                        let v = p.values.get(&s.parameter)?;
                        Some(format!("{}={v}", s.parameter))
                    })
                    .collect(),
                _ => vec![spec.output_name.clone()],
            };
            (img, label)
        })
        .collect();
    encode_png(&contact_sheet(&items, SHEET_CELL))
        .map_err(|e| CoordinatorError::Internal(e.to_string()))
}
