//! Test support: a fast, deterministic stand-in for the engine, for farm tests where the engine
//! is not the subject (scheduling, leases, retries, cancel, shutdown, blobs).
//!
//! [`FakeEngine`] returns the content image (resized to `image_size`, as the real engine does)
//! with its colours inverted (and a line of text for a tiled image's style targets), after
//! `num_iterations` steps of a configurable duration. It reports every step and a snapshot
//! every `save_iter` steps like the real engine, and stops with [`CoreError::Cancelled`]
//! within a few milliseconds of the cancel flag being set.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stylefarm_core::image_io::resize_to_max_side;
use stylefarm_core::settings::Losses;
use stylefarm_core::CoreError;
use stylefarm_engine::render::Observer;
use stylefarm_engine::{EngineError, Result};

use crate::engine::{Engine, RgbImage, StatisticsInput, TaskInput, TaskOutput};

/// Longest the fake sleeps before looking at the cancel flag again.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// A deterministic engine that inverts colours; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct FakeEngine {
    step: Duration,
    failure: Option<String>,
    models: Vec<String>,
}

impl FakeEngine {
    /// A fake that takes `step` per iteration and reports the model `fake`.
    pub fn new(step: Duration) -> Self {
        Self {
            step,
            failure: None,
            models: vec!["fake".to_string()],
        }
    }

    /// The same fake, but every task fails after its iterations with an engine error whose
    /// text contains `message` (for retry and set-aside tests).
    pub fn failing(mut self, message: impl Into<String>) -> Self {
        self.failure = Some(message.into());
        self
    }

    /// The same fake, reporting `models` to the coordinator.
    pub fn with_models(mut self, models: Vec<String>) -> Self {
        self.models = models;
        self
    }

    /// The image a task renders to: the content at `image_size`, colours inverted.
    pub fn expected_output(task: &TaskInput) -> RgbImage {
        let mut img = resize_to_max_side(&task.inputs.content, task.settings.image_size);
        image::imageops::invert(&mut img);
        img
    }

    /// The made-up losses after `iteration` steps (they fall like a real run's).
    pub fn losses(iteration: u32) -> Losses {
        let k = 1.0 / f64::from(iteration.max(1));
        Losses {
            content: 10.0 * k,
            style: 100.0 * k,
            style_layers: vec![100.0 * k],
            tv: k,
            total: 110.0 * k + k,
        }
    }

    /// The failure this engine was told to end every task with, if any.
    fn fail_if_told(&self) -> Result<()> {
        match &self.failure {
            Some(message) => Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "fake engine failure: {message}"
            )))),
            None => Ok(()),
        }
    }
}

impl Engine for FakeEngine {
    fn models(&self) -> Vec<String> {
        self.models.clone()
    }

    fn run(&self, task: &TaskInput, observer: &mut dyn Observer) -> Result<TaskOutput> {
        task.settings.validate(task.inputs.styles.len())?;
        let cancel = observer.cancel_flag();
        let cancelled = || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
        let image = Self::expected_output(task);
        let total = task.settings.num_iterations;
        for it in 1..=total {
            let until = Instant::now() + self.step;
            loop {
                if cancelled() {
                    return Err(CoreError::Cancelled.into());
                }
                let now = Instant::now();
                if now >= until {
                    break;
                }
                std::thread::sleep((until - now).min(CANCEL_POLL));
            }
            observer.iteration(it, total, &Self::losses(it))?;
            let save = task.settings.save_iter;
            if (save > 0 && it.is_multiple_of(save)) || observer.wants_snapshot(it) {
                observer.snapshot(it, &image)?;
            }
        }
        if cancelled() {
            return Err(CoreError::Cancelled.into());
        }
        self.fail_if_told()?;
        Ok(TaskOutput {
            image,
            losses: Self::losses(total),
            iterations: total,
        })
    }

    /// Made-up style targets.
    fn statistics(&self, input: &StatisticsInput) -> Result<Vec<u8>> {
        input.settings.validate(input.styles.len())?;
        self.fail_if_told()?;
        Ok(b"fake style targets".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use image::Rgb;
    use stylefarm_core::settings::RenderSettings;
    use stylefarm_engine::render::RenderInputs;

    use super::*;

    fn task(iterations: u32) -> TaskInput {
        TaskInput {
            inputs: RenderInputs {
                content: RgbImage::from_fn(40, 20, |x, y| Rgb([x as u8, y as u8, 200])),
                styles: vec![RgbImage::new(8, 8)],
                init_image: None,
            },
            settings: RenderSettings {
                image_size: 20,
                num_iterations: iterations,
                save_iter: 3,
                ..RenderSettings::default()
            },
            style_ids: vec![],
        }
    }

    #[derive(Default)]
    struct Record {
        iterations: Vec<u32>,
        snapshots: Vec<u32>,
        cancel: Option<Arc<AtomicBool>>,
    }

    impl Observer for Record {
        fn iteration(&mut self, it: u32, _: u32, _: &Losses) -> Result<()> {
            self.iterations.push(it);
            Ok(())
        }
        fn snapshot(&mut self, it: u32, _: &RgbImage) -> Result<()> {
            self.snapshots.push(it);
            Ok(())
        }
        fn cancel_flag(&self) -> Option<Arc<AtomicBool>> {
            self.cancel.clone()
        }
    }

    #[test]
    fn deterministic_inverted_content() {
        let engine = FakeEngine::new(Duration::ZERO);
        let mut rec = Record::default();
        let mut t = task(7);
        t.settings.image_size = 40;
        let a = engine.run(&t, &mut rec).unwrap();
        let b = engine.run(&t, &mut ()).unwrap();
        assert_eq!(a.image.as_raw(), b.image.as_raw());
        assert_eq!(a.image.dimensions(), (40, 20));
        for (x, y, p) in a.image.enumerate_pixels() {
            assert_eq!(p, &Rgb([255 - x as u8, 255 - y as u8, 55]));
        }
        // Resized to image_size like the real engine.
        let small = engine.run(&task(1), &mut ()).unwrap();
        assert_eq!(small.image.dimensions(), (20, 10));
        assert_eq!(a.iterations, 7);
        assert_eq!(a.losses, FakeEngine::losses(7));
        assert_eq!(rec.iterations, (1..=7).collect::<Vec<_>>());
        assert_eq!(rec.snapshots, vec![3, 6]);
    }

    #[test]
    fn cancel_stops_within_a_second() {
        let engine = FakeEngine::new(Duration::from_millis(100));
        let flag = Arc::new(AtomicBool::new(false));
        let setter = flag.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        struct Signal(std::sync::mpsc::Sender<()>, Arc<AtomicBool>);
        impl Observer for Signal {
            fn iteration(&mut self, _: u32, _: u32, _: &Losses) -> Result<()> {
                let _ = self.0.send(());
                Ok(())
            }
            fn cancel_flag(&self) -> Option<Arc<AtomicBool>> {
                Some(self.1.clone())
            }
        }
        let run =
            std::thread::spawn(move || engine.run(&task(1000), &mut Signal(started_tx, flag)));
        started_rx.recv().unwrap();
        let asked = Instant::now();
        setter.store(true, Ordering::Relaxed);
        let result = run.join().unwrap();
        assert!(matches!(&result, Err(e) if e.is_cancelled()), "{result:?}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
    }

    #[test]
    fn failing_fake_names_its_failure() {
        let engine = FakeEngine::new(Duration::ZERO).failing("boom");
        let err = engine.run(&task(2), &mut ()).unwrap_err().to_string();
        assert!(err.contains("fake engine failure: boom"), "{err}");
    }
}
