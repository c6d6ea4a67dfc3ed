//! The farm commands: `submit`, `watch`, `fetch`, `jobs`, `cancel`, `delete` and `workers`, each a
//! connection to a coordinator, a call or two, and output for people (results on stdout,
//! progress and notes on stderr).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_proto::connect::{self, TlsFiles};
use stylefarm_proto::v1::{self, Device, Job, JobState, TaskState, WorkerInfo};

use crate::farm::FarmClient;
use crate::job::JobInputs;
use crate::options::{expand_directories, split_paths, RenderOptions};
use crate::output::{write_atomically, write_image, OutputFormat};
use crate::progress::{follow, job_state_name, Display, DisplayOptions};
use crate::split::{plan_json, plan_text, SplitOptions};

/// Where the coordinator is, for every farm command.
#[derive(Args, Debug, Clone)]
pub struct FarmArgs {
    /// The coordinator's address.
    #[arg(
        long,
        value_name = "URL",
        env = "STYLEFARM_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// The farm token (or the clients' token), when the coordinator asks for one.
    #[arg(long, env = "STYLEFARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, value_name = "FILE", env = "STYLEFARM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS: the authority that signed the coordinator's certificate, PEM (an `https://`
    /// address without it trusts the system's roots).
    #[arg(long, value_name = "FILE", env = "STYLEFARM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate, PEM (with --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: this client's private key, PEM (with --tls-cert).
    #[arg(
        long,
        value_name = "FILE",
        env = "STYLEFARM_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl FarmArgs {
    /// Connects to the coordinator.
    pub async fn connect(&self) -> Result<FarmClient> {
        let token = connect::token(self.token.clone(), self.token_file.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tls = TlsFiles {
            ca: self.tls_ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        };
        Ok(FarmClient::connect_with(&self.coordinator, token.as_deref(), &tls).await?)
    }
}

/// Options of `stylefarm submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Content image(s): several, a comma-separated list or a directory (its images in name
    /// order) make one task per frame.
    #[arg(required = true, num_args = 1.., value_name = "CONTENT")]
    pub content: Vec<String>,
    /// Style image(s), comma-separated.
    #[arg(value_name = "STYLE")]
    pub style: String,
    /// The render options.
    #[command(flatten)]
    pub options: RenderOptions,
    /// Tiles, sweeps and coarse-to-fine stages.
    #[command(flatten)]
    pub split: SplitOptions,
    /// Each frame starts from the previous frame's output (steadier video, one frame at a
    /// time).
    #[arg(long)]
    pub temporal: bool,
    /// Print the plan (tasks, tile grid, estimated memory and time) instead of submitting.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// A name for the job (default: the first content file's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Attempts per task before the job fails (0: the coordinator's default).
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u32,
    /// Run only on workers of this kind (default: any worker; such tasks count toward the
    /// `cpu` pool when a farm autoscales).
    #[arg(long, value_enum, value_name = "DEVICE")]
    pub device: Option<DeviceChoice>,
    /// The coordinator.
    #[command(flatten)]
    pub farm: FarmArgs,
}

/// The workers a job may run on (`stylefarm submit --device`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CPU workers only.
    Cpu,
    /// CUDA workers only.
    Cuda,
}

impl DeviceChoice {
    /// The device on the wire.
    pub fn to_proto(self) -> Device {
        match self {
            Self::Cpu => Device::Cpu,
            Self::Cuda => Device::Cuda,
        }
    }
}

/// Options of `stylefarm watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The job's id.
    pub job: String,
    /// Without a terminal: a line every N iterations per task.
    #[arg(long, default_value_t = 50)]
    pub print_iter: u32,
    /// The coordinator.
    #[command(flatten)]
    pub farm: FarmArgs,
}

/// Options of `stylefarm fetch`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The job's id.
    pub job: String,
    /// Output image (.png, or .jpg to convert); a directory for a job of several frames.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The coordinator.
    #[command(flatten)]
    pub farm: FarmArgs,
}

/// Options of `stylefarm jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// How many of the newest jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// The coordinator.
    #[command(flatten)]
    pub farm: FarmArgs,
}

/// Options of `stylefarm cancel` and `stylefarm delete`: one job.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job's id.
    pub job: String,
    /// The coordinator.
    #[command(flatten)]
    pub farm: FarmArgs,
}

/// Options of `stylefarm workers`.
#[derive(Args, Debug)]
pub struct WorkersArgs {
    /// The coordinator.
    #[command(flatten)]
    pub farm: FarmArgs,
    /// Only the live workers (seen within a lease duration), not those that stopped or lost
    /// the coordinator.
    #[arg(long)]
    pub live: bool,
}

/// A runtime for one command's network calls (the CPU work is elsewhere).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `stylefarm submit`: checks and uploads the images, submits, prints the job id on stdout
/// (or, with `--dry-run`, the plan the coordinator would make of it).
pub fn submit(args: &SubmitArgs) -> Result<()> {
    let mut settings = args.options.settings()?;
    args.split.adjust(&mut settings)?;
    let mut split = v1::JobSpec::default();
    args.split.apply(&mut split, &settings)?;
    let content = expand_directories(args.content.iter().flat_map(|c| split_paths(c)).collect())?;
    let styles = split_paths(&args.style);
    let init = args.options.init_path();
    let inputs = JobInputs::load(&content, &styles, init.as_deref(), &settings)?;
    let printed = runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        let mut spec = inputs.upload(&client, &settings).await?;
        if let Some(name) = &args.name {
            spec.name.clone_from(name);
        }
        spec.priority = args.priority;
        spec.max_attempts = args.max_attempts;
        spec.temporal = args.temporal;
        spec.device = args
            .device
            .map_or(Device::Unspecified, DeviceChoice::to_proto) as i32;
        (spec.tiles, spec.sweeps, spec.scales) = (split.tiles, split.sweeps, split.scales);
        if args.dry_run {
            let plan = client.plan(spec).await?;
            return if args.json {
                plan_json(&plan)
            } else {
                Ok(plan_text(&plan).trim_end().to_string())
            };
        }
        anyhow::Ok(client.submit(spec).await?)
    })?;
    println!("{printed}");
    Ok(())
}

/// `stylefarm watch`: progress until the job ends; an error unless it completed.
pub fn watch(args: &WatchArgs) -> Result<()> {
    let job = runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        let mut display = Display::new(DisplayOptions::for_stderr(args.print_iter, true));
        let job = follow(&client, &args.job, &mut display).await;
        display.finish(false);
        anyhow::Ok(job?)
    })?;
    verdict(&job)?;
    let n = job.tasks.len();
    eprintln!(
        "job {} completed ({n} task{})",
        job.id,
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Ok for a completed job; for a failed or canceled one, an error saying so in one sentence.
pub fn verdict(job: &Job) -> Result<()> {
    match JobState::try_from(job.state) {
        Ok(JobState::Completed) => Ok(()),
        Ok(JobState::Failed) if job.error.is_empty() => bail!("job {} failed", job.id),
        Ok(JobState::Failed) => bail!("job {} failed: {}", job.id, job.error),
        Ok(JobState::Canceled) => bail!("job {} was canceled", job.id),
        _ => bail!(
            "job {} has not finished: it is {}",
            job.id,
            job_state_name(job.state)
        ),
    }
}

/// `stylefarm fetch`: the result of a completed job, or its frames into a directory.
pub fn fetch(args: &FetchArgs) -> Result<()> {
    runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        let job = client.job(&args.job).await?;
        if JobState::try_from(job.state) != Ok(JobState::Completed) {
            bail!(
                "job {} is {}: only a completed job has results to fetch",
                job.id,
                job_state_name(job.state)
            );
        }
        // Intermediate results (statistics, shards, early stages) are not outputs.
        let mut tasks: Vec<_> = job
            .tasks
            .iter()
            .filter(|t| !t.spec.as_ref().is_some_and(|s| s.intermediate))
            .collect();
        tasks.sort_by_key(|t| t.index);
        let single = match tasks.as_slice() {
            [task] => job.result.as_ref().or(task.result.as_ref()),
            // A file asked for: the job's own result (an assembled image, a contact sheet).
            _ if OutputFormat::of(&args.output).is_some() => job.result.as_ref(),
            _ => None,
        };
        if let Some(blob) = single {
            let bytes = client.download(blob).await?;
            write_image(&bytes, &args.output)?;
            eprintln!("wrote {}", args.output.display());
            return Ok(());
        }
        if tasks.len() <= 1 {
            bail!("job {} completed without a result", job.id);
        }
        if OutputFormat::of(&args.output).is_some() {
            bail!(
                "job {} has {} outputs: give a directory for -o, not {}",
                job.id,
                tasks.len(),
                args.output.display()
            );
        }
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create the directory {}", args.output.display()))?;
        for task in &tasks {
            let name = task
                .spec
                .as_ref()
                .map(|s| s.output_name.clone())
                .filter(|n| is_plain_file_name(n))
                .unwrap_or_else(|| format!("frame_{:04}.png", task.index));
            let Some(blob) = &task.result else {
                bail!("task {} of job {} has no result", task.index, job.id);
            };
            let bytes = client.download(blob).await?;
            write_atomically(&args.output.join(&name), &bytes)?;
        }
        eprintln!("wrote {} images to {}", tasks.len(), args.output.display());
        Ok(())
    })
}

/// An output name from the coordinator is used only if it cannot leave the directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// `stylefarm jobs`: the newest jobs as a table on stdout.
pub fn jobs(args: &JobsArgs) -> Result<()> {
    let jobs = runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        anyhow::Ok(client.list_jobs(args.limit).await?)
    })?;
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let done = j
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Succeeded as i32)
                .count();
            vec![
                j.id.clone(),
                job_state_name(j.state).to_string(),
                format!("{done}/{}", j.tasks.len()),
                format_unix_ms(j.created_unix_ms),
                j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "STATE", "TASKS", "CREATED (UTC)", "NAME"], &rows)
    );
    Ok(())
}

/// `stylefarm cancel`: cancels a job and says what became of it.
pub fn cancel(args: &JobArgs) -> Result<()> {
    let job = runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        anyhow::Ok(client.cancel(&args.job).await?)
    })?;
    println!("{} {}", job.id, job_state_name(job.state));
    Ok(())
}

/// `stylefarm delete`: deletes a finished job, its tasks and the blobs only it used.
pub fn delete(args: &JobArgs) -> Result<()> {
    runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        anyhow::Ok(client.delete(&args.job).await?)
    })?;
    println!("{} deleted", args.job);
    Ok(())
}

/// `stylefarm workers`: the registered workers as a table on stdout.
pub fn workers(args: &WorkersArgs) -> Result<()> {
    let workers = runtime()?.block_on(async {
        let client = args.farm.connect().await?;
        anyhow::Ok(client.workers().await?)
    })?;
    let rows: Vec<Vec<String>> = workers
        .iter()
        .filter(|w| w.live || !args.live)
        .map(worker_row)
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "STATE",
                "DEVICE",
                "THREADS",
                "MEMORY",
                "MODELS",
                "TASK",
                "DONE",
                "FAILED",
                "LAST SEEN (UTC)"
            ],
            &rows
        )
    );
    Ok(())
}

fn worker_row(w: &WorkerInfo) -> Vec<String> {
    let caps = w.capabilities.clone().unwrap_or_default();
    let device = match Device::try_from(caps.device) {
        Ok(Device::Cpu) => "cpu",
        Ok(Device::Cuda) => "cuda",
        Ok(Device::Unspecified) | Err(_) => "?",
    };
    vec![
        w.id.clone(),
        w.name.clone(),
        if w.live { "live" } else { "lost" }.to_string(),
        device.to_string(),
        caps.threads.to_string(),
        match caps.memory_bytes {
            0 => "?".to_string(),
            b => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        },
        caps.models.join(","),
        if w.current_task_id.is_empty() {
            "-".to_string()
        } else {
            w.current_task_id.clone()
        },
        w.tasks_done.to_string(),
        w.tasks_failed.to_string(),
        format_unix_ms(w.last_seen_unix_ms),
    ]
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `2024-01-01 12:00:00` (UTC) for milliseconds since the Unix epoch; `-` for 0.
fn format_unix_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(format_unix_ms(1_704_067_200_000), "2024-01-01 00:00:00");
        assert_eq!(
            format_unix_ms(951_782_400_000 + 3_661_000),
            "2000-02-29 01:01:01"
        );
        assert_eq!(format_unix_ms(0), "-");
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["job-1".into(), "active".into()],
                vec!["j".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID     STATE\njob-1  active\nj      x\n");
    }

    #[test]
    fn verdicts_are_one_sentence() {
        let mut job = Job {
            id: "job-1".into(),
            state: JobState::Completed as i32,
            ..Job::default()
        };
        assert!(verdict(&job).is_ok());
        job.state = JobState::Failed as i32;
        job.error = "task 0 (a.png) failed after 3 attempts: boom".into();
        assert_eq!(
            verdict(&job).unwrap_err().to_string(),
            "job job-1 failed: task 0 (a.png) failed after 3 attempts: boom"
        );
        job.state = JobState::Canceled as i32;
        assert_eq!(
            verdict(&job).unwrap_err().to_string(),
            "job job-1 was canceled"
        );
    }
}
