//! Following a job: its `WatchJob` events drive a progress bar per task (indicatif, on a
//! terminal) or plain lines (otherwise), and a watch that breaks (a coordinator restart) is
//! opened again until the job ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stylefarm_proto::v1::{job_event::Event, Job, JobEvent, JobState, Losses, Task, TaskState};
use tonic::Code;

use crate::farm::{FarmClient, FarmError};

/// How long a coordinator may stay unreachable while a job is followed.
const MAX_OUTAGE: Duration = Duration::from_secs(120);
/// First wait before watching again after the watch broke (doubles up to 5 s).
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// Whether a job has ended (completed, failed or canceled).
pub fn is_final(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Completed | JobState::Failed | JobState::Canceled)
    )
}

/// A job state in words (`completed`, `active`, ...).
pub fn job_state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Queued) => "queued",
        Ok(JobState::Active) => "active",
        Ok(JobState::Completed) => "completed",
        Ok(JobState::Failed) => "failed",
        Ok(JobState::Canceled) => "canceled",
        Ok(JobState::Unspecified) | Err(_) => "unknown",
    }
}

/// A task state in words.
pub fn task_state_name(state: i32) -> &'static str {
    match TaskState::try_from(state) {
        Ok(TaskState::Queued) => "queued",
        Ok(TaskState::Leased) => "leased",
        Ok(TaskState::Running) => "running",
        Ok(TaskState::Succeeded) => "succeeded",
        Ok(TaskState::SoftFailed) => "failed, will retry",
        Ok(TaskState::Failed) => "failed",
        Ok(TaskState::Canceled) => "canceled",
        Ok(TaskState::Waiting) => "waiting",
        Ok(TaskState::Unspecified) | Err(_) => "unknown",
    }
}

/// Losses in one line.
pub fn losses_text(l: &Losses) -> String {
    format!(
        "content {:.4e}  style {:.4e}  tv {:.3e}  total {:.4e}",
        l.content, l.style, l.tv, l.total
    )
}

/// How progress is shown.
#[derive(Debug, Clone, Copy)]
pub struct DisplayOptions {
    /// Bars (a terminal) or plain lines.
    pub bars: bool,
    /// Plain lines: one every this many iterations per task (0: none).
    pub print_iter: u32,
    /// Plain lines: also a line when a task starts, ends or is retried.
    pub task_states: bool,
}

impl DisplayOptions {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr(print_iter: u32, task_states: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            bars: std::io::stderr().is_terminal(),
            print_iter,
            task_states,
        }
    }
}

/// What is known about one task, and its bar.
struct TaskLine {
    label: String,
    state: i32,
    bar: Option<ProgressBar>,
    /// Plain lines: the last iteration printed.
    printed: u32,
    /// When the task was first seen running, and at which iteration.
    since: Option<(Instant, u32)>,
    /// Plain lines: the last state line printed (not repeated).
    noted: String,
}

/// The progress display of one job.
pub struct Display {
    options: DisplayOptions,
    multi: Option<MultiProgress>,
    tasks: HashMap<String, TaskLine>,
    /// Tasks of the job (labels are only shown when there are several).
    task_count: usize,
    /// Width of the longest label, so that the bars line up.
    label_width: usize,
    job_state: i32,
}

impl Display {
    /// A display that has seen nothing yet.
    pub fn new(options: DisplayOptions) -> Self {
        let multi = options
            .bars
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            options,
            multi,
            tasks: HashMap::new(),
            task_count: 0,
            label_width: 0,
            job_state: JobState::Unspecified as i32,
        }
    }

    /// Takes one event in; returns the job's state when the event carried it.
    pub fn event(&mut self, event: &JobEvent) -> Option<i32> {
        match event.event.as_ref()? {
            Event::Snapshot(job) => {
                self.snapshot(job);
                Some(job.state)
            }
            Event::Task(task) => {
                self.task(task);
                None
            }
            Event::Job(job) => {
                self.job_state = job.state;
                Some(job.state)
            }
        }
    }

    /// Takes a whole job in (a snapshot, or the job fetched at the end).
    pub fn snapshot(&mut self, job: &Job) {
        self.job_state = job.state;
        self.task_count = self.task_count.max(job.tasks.len());
        if self.task_count > 1 {
            for t in &job.tasks {
                self.label_width = self.label_width.max(label_of(t).chars().count());
            }
        }
        let mut tasks: Vec<&Task> = job.tasks.iter().collect();
        tasks.sort_by_key(|t| t.index);
        for t in tasks {
            self.task(t);
        }
    }

    /// Takes one task's new state in.
    pub fn task(&mut self, task: &Task) {
        let new = !self.tasks.contains_key(&task.id);
        if new {
            let line = self.new_line(task);
            self.tasks.insert(task.id.clone(), line);
        }
        let options = self.options;
        let Some(line) = self.tasks.get_mut(&task.id) else {
            return;
        };
        let state_changed = new || line.state != task.state;
        let was_waiting = !new && line.state == TaskState::Waiting as i32;
        line.state = task.state;
        let state = TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified);
        if matches!(state, TaskState::Queued | TaskState::SoftFailed) {
            line.since = None;
            line.printed = 0;
        }
        if matches!(state, TaskState::Leased | TaskState::Running) && line.since.is_none() {
            // Iterations are timed from here (or from the first progress seen, when the
            // watch began mid-task).
            let at = task.progress.as_ref().map_or(0, |p| p.iteration);
            line.since = Some((Instant::now(), at));
        }
        let ended = matches!(
            state,
            TaskState::Succeeded | TaskState::Failed | TaskState::Canceled
        );
        if let Some(p) = task.progress.as_ref().filter(|_| !ended) {
            let (since, since_it) = *line.since.get_or_insert((Instant::now(), p.iteration));
            let losses = p.losses.as_ref().map(losses_text).unwrap_or_default();
            match &line.bar {
                Some(bar) => {
                    if p.total_iterations > 0 {
                        bar.set_length(u64::from(p.total_iterations));
                    }
                    bar.set_position(u64::from(p.iteration));
                    bar.set_message(losses);
                }
                None => {
                    let due = options.print_iter > 0
                        && p.iteration > line.printed
                        && (p.iteration / options.print_iter > line.printed / options.print_iter
                            || (p.iteration == p.total_iterations && p.total_iterations > 0));
                    if due && state == TaskState::Running {
                        line.printed = p.iteration;
                        let done = p.iteration.saturating_sub(since_it).max(1);
                        let per_it = since.elapsed().as_secs_f64() / f64::from(done);
                        eprintln!(
                            "{}iteration {}/{}  {losses}  ({per_it:.3} s/it)",
                            prefix(&line.label),
                            p.iteration,
                            p.total_iterations
                        );
                    }
                }
            }
        }
        if !state_changed {
            return;
        }
        let Some(note) = state_note(state, task, new, was_waiting) else {
            return;
        };
        match &line.bar {
            Some(bar) => match state {
                TaskState::Succeeded => {
                    bar.set_position(bar.length().unwrap_or(0));
                    bar.finish_with_message(note);
                }
                TaskState::Failed | TaskState::Canceled => bar.abandon_with_message(note),
                TaskState::Queued => {
                    bar.set_position(0);
                    bar.set_message(note);
                }
                _ => bar.set_message(note),
            },
            None if options.task_states && line.noted != note => {
                let label = if line.label.is_empty() {
                    format!("task {}", task.index)
                } else {
                    line.label.clone()
                };
                eprintln!("{label}: {note}");
                line.noted = note;
            }
            None => {}
        }
    }

    fn new_line(&mut self, task: &Task) -> TaskLine {
        let label = if self.task_count > 1 {
            label_of(task)
        } else {
            String::new()
        };
        let total = task
            .progress
            .as_ref()
            .map(|p| p.total_iterations)
            .filter(|t| *t > 0)
            .or_else(|| {
                task.spec
                    .as_ref()
                    .and_then(|s| s.settings.as_ref())
                    .and_then(|s| s.num_iterations)
            })
            .unwrap_or(0);
        let bar = self.multi.as_ref().map(|multi| {
            let template = if label.is_empty() {
                "{bar:30} {pos}/{len} it  {msg}  {per_sec}  ETA {eta}".to_string()
            } else {
                format!(
                    "{{prefix:{}}} {{bar:30}} {{pos}}/{{len}} it  {{msg}}  {{per_sec}}  ETA {{eta}}",
                    self.label_width
                )
            };
            let bar = multi.add(ProgressBar::new(u64::from(total)));
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(label.clone());
            bar
        });
        TaskLine {
            label,
            state: TaskState::Unspecified as i32,
            bar,
            printed: 0,
            since: None,
            noted: String::new(),
        }
    }

    /// The job's state as last seen.
    pub fn job_state(&self) -> i32 {
        self.job_state
    }

    /// Ends the display: bars are cleared (`clear`) or left on screen.
    pub fn finish(&mut self, clear: bool) {
        for line in self.tasks.values() {
            if let Some(bar) = &line.bar {
                if clear {
                    bar.finish_and_clear();
                } else if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
        if clear {
            if let Some(multi) = &self.multi {
                // Only fails when the terminal cannot be written, which is no reason to fail.
                let _ = multi.clear();
            }
        }
    }
}

/// What to say when a task enters `state` (`new`: first seen; `was_waiting`: it waited for
/// other tasks until now); `None`: nothing to say.
fn state_note(state: TaskState, task: &Task, new: bool, was_waiting: bool) -> Option<String> {
    Some(match state {
        TaskState::Leased | TaskState::Running => format!("running on {}", task.worker_id),
        TaskState::Succeeded => match &task.final_losses {
            Some(l) => format!("done  {}", losses_text(l)),
            None => "done".to_string(),
        },
        TaskState::Failed => format!("failed: {}", task.error),
        TaskState::SoftFailed => format!("failed, will retry: {}", task.error),
        TaskState::Canceled => "canceled".to_string(),
        TaskState::Queued if was_waiting => "ready".to_string(),
        TaskState::Queued if !new => "queued again".to_string(),
        TaskState::Queued | TaskState::Waiting | TaskState::Unspecified => return None,
    })
}

/// A task's name in a job of several: its output file's name.
fn label_of(task: &Task) -> String {
    task.spec
        .as_ref()
        .map(|s| s.output_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("task {}", task.index))
}

fn prefix(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    }
}

/// Follows job `job_id` until it ends, feeding `display`; returns the job as it ended, tasks
/// included. A watch that breaks is opened again (the coordinator may be restarting) for up
/// to two minutes of outage.
///
/// # Errors
/// A job that does not exist, or a coordinator that stays unreachable.
pub async fn follow(
    client: &FarmClient,
    job_id: &str,
    display: &mut Display,
) -> Result<Job, FarmError> {
    let mut outage: Option<Instant> = None;
    let mut wait = FIRST_RETRY;
    loop {
        let mut last_error: Option<FarmError> = None;
        match client.watch(job_id).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        outage = None;
                        wait = FIRST_RETRY;
                        if display.event(&event).is_some_and(is_final) {
                            let job = client.job(job_id).await?;
                            display.snapshot(&job);
                            return Ok(job);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        last_error = Some(client.error(status));
                        break;
                    }
                }
            },
            Err(e) if e.code() == Some(Code::Unavailable) => last_error = Some(e),
            Err(e) => return Err(e),
        }
        // The stream ended: the job is over, or the coordinator went away.
        match client.job(job_id).await {
            Ok(job) if is_final(job.state) => {
                display.snapshot(&job);
                return Ok(job);
            }
            Ok(_) => {}
            Err(e) if e.code() == Some(Code::Unavailable) => last_error = Some(e),
            Err(e) => return Err(e),
        }
        let began = *outage.get_or_insert_with(Instant::now);
        if began.elapsed() > MAX_OUTAGE {
            return Err(last_error.unwrap_or_else(|| FarmError::Unreachable {
                url: client.url().to_string(),
                reason: "the job's event stream keeps ending".into(),
            }));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
