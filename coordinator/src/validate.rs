//! Checking a submitted job from end to end and turning it into tasks: every field, every
//! referenced blob (stored, of the declared size, a decodable image), the settings through the
//! engine's own checks. A job that passes here runs; one that does not is refused with a
//! sentence naming the field, and nothing else on the farm notices.

use std::collections::HashMap;
use std::sync::Mutex;

use stylefarm_convert::settings_from_proto;
use stylefarm_core::image_io::{decode_image, DecodeLimits};
use stylefarm_core::lockstep::style_targets_of_statistics;
use stylefarm_core::settings::Init;
use stylefarm_proto::ids::JobId;
use stylefarm_proto::v1;
use tokio::sync::Semaphore;

use crate::blobs::{BlobHash, BlobStore};
use crate::error::{CoordinatorError, Result};
use crate::plan::{plan_tasks, FarmSize, PlanInputs};
use crate::scheduler::TaskKind;

/// Most style images in one job.
pub(crate) const MAX_STYLES: usize = 32;
/// Longest job name, in characters.
const MAX_NAME_CHARS: usize = 256;
/// Longest content name (a file name), in bytes.
const MAX_FILE_NAME_BYTES: usize = 255;
/// Most attempts a job may ask for per task.
const MAX_ATTEMPTS: u32 = 100;
/// Most memory a job may say a task needs: 4 TiB, more than any one machine holds today.
const MAX_REQUIRED_MEMORY_BYTES: u64 = 4 << 40;

/// A checked job, ready for the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct JobPlan {
    pub(crate) id: JobId,
    /// As submitted, with blob sizes (and a tile size the coordinator picked) filled in.
    pub(crate) spec: v1::JobSpec,
    /// Its tasks, in index order (dependencies point to earlier ones).
    pub(crate) tasks: Vec<v1::TaskSpec>,
    /// The tasks with their sizes and estimates, for `PlanJob`.
    pub(crate) summary: v1::PlanJobResponse,
}

/// Decodes each blob used as an image once (decoding is the expensive part of checking a
/// job) and one at a time, so that a burst of submissions cannot exhaust memory.
#[derive(Debug)]
pub(crate) struct ImageChecker {
    /// Decodable images and their `(width, height)`.
    checked: Mutex<HashMap<BlobHash, (u32, u32)>>,
    permits: Semaphore,
    limits: DecodeLimits,
}

impl ImageChecker {
    /// Accepts images of up to `max_pixels` pixels (and the default limits otherwise).
    pub(crate) fn new(max_pixels: u64) -> Self {
        let defaults = DecodeLimits::default();
        Self {
            checked: Mutex::new(HashMap::new()),
            permits: Semaphore::new(1),
            limits: DecodeLimits {
                max_pixels,
                ..defaults
            },
        }
    }

    fn known(&self, hash: &BlobHash) -> Option<(u32, u32)> {
        self.checked.lock().ok().and_then(|c| c.get(hash).copied())
    }

    /// Checks that the stored blob `hash` is an image the workers can decode and returns its
    /// `(width, height)`; errors name `field`.
    pub(crate) async fn check(
        &self,
        blobs: &BlobStore,
        hash: &BlobHash,
        field: &str,
    ) -> Result<(u32, u32)> {
        if let Some(dims) = self.known(hash) {
            return Ok(dims);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        if let Some(dims) = self.known(hash) {
            return Ok(dims);
        }
        let bytes = blobs.read_all(hash).await?;
        let what = format!("blob {hash}");
        let limits = self.limits;
        let decoded = tokio::task::spawn_blocking(move || {
            decode_image(&bytes, &what, &limits).map(|img| img.dimensions())
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("checking an image failed: {e}")))?;
        match decoded {
            Ok(dims) => {
                if let Ok(mut c) = self.checked.lock() {
                    c.insert(hash.clone(), dims);
                }
                Ok(dims)
            }
            Err(e) => Err(CoordinatorError::invalid(field, e.to_string())),
        }
    }
}

/// Limits a job is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobLimits {
    pub(crate) max_tasks: usize,
    /// Iterations per task.
    pub(crate) max_iterations: u32,
    /// Unfinished jobs on the farm.
    pub(crate) max_queued_jobs: usize,
    /// Unfinished jobs of one client address.
    pub(crate) max_queued_jobs_per_client: usize,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CoordinatorError {
    CoordinatorError::invalid(field, reason)
}

/// A blob reference that names a stored blob; its size is filled in when it was 0.
async fn check_blob(blobs: &BlobStore, blob: &mut v1::BlobRef, field: &str) -> Result<BlobHash> {
    let hash = BlobHash::parse(&blob.sha256, &format!("{field}.sha256"))?;
    let Some(size) = blobs.size(&hash).await? else {
        return Err(invalid(field, format!("blob {hash} has not been uploaded")));
    };
    if blob.size != 0 && blob.size != size {
        return Err(invalid(
            format!("{field}.size"),
            format!("blob {hash} holds {size} bytes, not {}", blob.size),
        ));
    }
    blob.size = size;
    Ok(hash)
}

/// Checks a worker's result before it counts: a render's (and a shard's, which names its
/// driver's) must be an image the coordinator can decode, a statistics task's must hold the
/// style targets of every style layer. Garbage is refused with INVALID_ARGUMENT and the task
/// stays leased, so a broken worker's result never reaches `fetch`.
pub(crate) async fn check_result(
    blobs: &BlobStore,
    images: &ImageChecker,
    hash: &BlobHash,
    kind: TaskKind,
    spec: &v1::TaskSpec,
) -> Result<()> {
    match kind {
        TaskKind::Render | TaskKind::Shard => images.check(blobs, hash, "result").await.map(drop),
        TaskKind::Statistics => {
            let settings = spec.settings.clone().unwrap_or_default();
            let engine = settings_from_proto(&settings, spec.styles.len(), "settings")?;
            let bytes = blobs.read_all(hash).await?;
            tokio::task::spawn_blocking(move || {
                style_targets_of_statistics(&bytes, &engine.style_layers).map(drop)
            })
            .await
            .map_err(|e| CoordinatorError::Internal(format!("checking a result failed: {e}")))?
            .map_err(|e| invalid("result", format!("blob {}: {e}", hash)))
        }
        TaskKind::Driver | TaskKind::Sheet => Err(invalid(
            "lease_id",
            "the coordinator runs this task itself; a worker cannot complete it",
        )),
    }
}

/// Whether `name` can name an output file on any system.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME_BYTES
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Output file names: the content's name with a `.png` extension, or `frame_NNNN.png`; made
/// unique by appending the frame index where two would collide.
fn output_names(spec: &v1::JobSpec) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut names = Vec::with_capacity(spec.content.len());
    for index in 0..spec.content.len() {
        let base = match spec.content_names.get(index) {
            Some(n) => {
                let stem = std::path::Path::new(n)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(n);
                format!("{stem}.png")
            }
            None => format!("frame_{index:04}.png"),
        };
        let count = seen.entry(base.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            names.push(base);
        } else {
            let stem = base.trim_end_matches(".png");
            names.push(format!("{stem}_{index:04}.png"));
        }
    }
    names
}

/// Checks a submitted spec and plans its tasks for the live workers `farm` (the most memory
/// one reports decides the tile size when the job gives none and needs one; their number, the
/// shards of tiles in lock step).
pub(crate) async fn plan_job(
    spec: Option<v1::JobSpec>,
    limits: JobLimits,
    blobs: &BlobStore,
    images: &ImageChecker,
    farm: FarmSize,
) -> Result<JobPlan> {
    let mut spec = spec.ok_or_else(|| invalid("spec", "missing: a job needs a spec"))?;

    if spec.name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            "spec.name",
            format!("longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if spec.content.is_empty() {
        return Err(invalid(
            "spec.content",
            "at least one content image is needed",
        ));
    }
    if spec.content.len() > limits.max_tasks {
        return Err(CoordinatorError::LimitExceeded(format!(
            "spec.content holds {} images, over the limit of {} tasks per job",
            spec.content.len(),
            limits.max_tasks
        )));
    }
    if spec.styles.is_empty() {
        return Err(invalid("spec.styles", "at least one style image is needed"));
    }
    if spec.styles.len() > MAX_STYLES {
        return Err(CoordinatorError::LimitExceeded(format!(
            "spec.styles holds {} images, over the limit of {MAX_STYLES}",
            spec.styles.len()
        )));
    }
    if !spec.content_names.is_empty() {
        if spec.content_names.len() != spec.content.len() {
            return Err(invalid(
                "spec.content_names",
                format!(
                    "{} names for {} content images",
                    spec.content_names.len(),
                    spec.content.len()
                ),
            ));
        }
        for (i, name) in spec.content_names.iter().enumerate() {
            if !plain_file_name(name) {
                let shown: String = name.chars().take(80).collect();
                return Err(invalid(
                    format!("spec.content_names[{i}]"),
                    format!("`{shown}` is not a plain file name"),
                ));
            }
        }
    }
    if v1::Device::try_from(spec.device).is_err() {
        return Err(invalid(
            "spec.device",
            format!(
                "unknown device {} (DEVICE_UNSPECIFIED, DEVICE_CPU or DEVICE_CUDA)",
                spec.device
            ),
        ));
    }
    if spec.max_attempts > MAX_ATTEMPTS {
        return Err(invalid(
            "spec.max_attempts",
            format!("{} is over the limit of {MAX_ATTEMPTS}", spec.max_attempts),
        ));
    }

    if spec.required_memory_bytes > MAX_REQUIRED_MEMORY_BYTES {
        return Err(invalid(
            "spec.required_memory_bytes",
            format!(
                "{} is over the limit of {MAX_REQUIRED_MEMORY_BYTES} (4 TiB)",
                spec.required_memory_bytes
            ),
        ));
    }

    let settings = spec.settings.clone().unwrap_or_default();
    let engine = settings_from_proto(&settings, spec.styles.len(), "spec.settings")?;
    let most_iterations = spec
        .scales
        .iter()
        .flat_map(|s| s.iterations.iter().copied())
        .chain([engine.num_iterations])
        .max()
        .unwrap_or(0);
    if most_iterations > limits.max_iterations {
        return Err(CoordinatorError::LimitExceeded(format!(
            "spec.settings.num_iterations: {most_iterations} iterations is over this farm's limit \
             of {} per task (--max-iterations)",
            limits.max_iterations
        )));
    }

    let init_given = spec
        .init_image
        .as_ref()
        .is_some_and(|b| !b.sha256.is_empty() || b.size != 0);
    match (engine.init == Init::Image, init_given) {
        (true, false) => {
            return Err(invalid(
                "spec.init_image",
                "spec.settings.init is IMAGE but no init image was given",
            ))
        }
        (false, true) => {
            return Err(invalid(
                "spec.init_image",
                "an init image was given but spec.settings.init is not IMAGE",
            ))
        }
        (true, true) | (false, false) => {}
    }
    if !init_given {
        spec.init_image = None;
    }

    // Every blob: well-formed, stored, of the declared size; then decodable.
    let mut images_to_check = Vec::new();
    for (i, blob) in spec.content.iter_mut().enumerate() {
        let field = format!("spec.content[{i}]");
        images_to_check.push((check_blob(blobs, blob, &field).await?, field));
    }
    for (i, blob) in spec.styles.iter_mut().enumerate() {
        let field = format!("spec.styles[{i}]");
        images_to_check.push((check_blob(blobs, blob, &field).await?, field));
    }
    if let Some(blob) = spec.init_image.as_mut() {
        let field = "spec.init_image".to_string();
        images_to_check.push((check_blob(blobs, blob, &field).await?, field));
    }
    let mut content_dims = Vec::with_capacity(spec.content.len());
    for (i, (hash, field)) in images_to_check.iter().enumerate() {
        let dims = images.check(blobs, hash, field).await?;
        if i < spec.content.len() {
            content_dims.push(dims);
        }
    }

    let names = output_names(&spec);
    let planned = plan_tasks(
        &spec,
        &PlanInputs {
            settings: &engine,
            content_dims: &content_dims,
            names: &names,
            farm,
            max_tasks: limits.max_tasks,
        },
    )?;
    if let Some(t) = planned.picked_tiles {
        // The job's spec shows the tiles it got.
        spec.tiles = Some(t);
    }
    Ok(JobPlan {
        id: JobId::new(),
        spec,
        tasks: planned.tasks,
        summary: planned.response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_come_from_content_names_and_stay_unique() {
        let blob = v1::BlobRef::default();
        let spec = v1::JobSpec {
            content: vec![blob.clone(), blob.clone(), blob],
            content_names: vec!["a.jpg".into(), "b.png".into(), "a.png".into()],
            ..Default::default()
        };
        assert_eq!(output_names(&spec), ["a.png", "b.png", "a_0002.png"]);
        let spec = v1::JobSpec {
            content: vec![v1::BlobRef::default(); 2],
            ..Default::default()
        };
        assert_eq!(output_names(&spec), ["frame_0000.png", "frame_0001.png"]);
    }

    #[test]
    fn file_names_are_plain() {
        assert!(plain_file_name("tubingen.jpg"));
        assert!(!plain_file_name("../etc/passwd"));
        assert!(!plain_file_name("a\\b"));
        assert!(!plain_file_name(".."));
        assert!(!plain_file_name(""));
    }
}
