//! The bridge from the render thread to the async side: the engine's [`Observer`] writes the
//! latest progress and a small JPEG preview into a `watch` channel (never blocking, never
//! queueing), and hands the engine the task's cancel flag.
//!
//! Previews are due by time as well as by count: after the first iteration, then at least
//! every [`PREVIEW_INTERVAL`] (and every `preview_every` iterations), so that whoever watches
//! (the web monitor) sees a picture within 2 s of a task starting and then every 2 s at
//! least, on a slow CPU as on a fast GPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stylefarm_core::image_io::{encode_jpeg, resize_to_max_side, RgbImage};
use stylefarm_core::settings::Losses;
use stylefarm_core::CoreError;
use stylefarm_engine::render::Observer;
use stylefarm_engine::Result;
use tokio::sync::watch;

use stylefarm_proto::blob::sha256_hex;

/// Longer side of a preview, in pixels (smaller images are not enlarged).
pub(crate) const PREVIEW_SIDE: u32 = 256;
/// JPEG quality of previews.
const PREVIEW_QUALITY: u8 = 80;
/// The longest time between two previews of a render (the heartbeat loop sends a new one
/// within a quarter of a second).
pub(crate) const PREVIEW_INTERVAL: Duration = Duration::from_secs(1);

/// A preview image, encoded, with its blob hash.
#[derive(Debug, Clone)]
pub(crate) struct Preview {
    pub(crate) iteration: u32,
    pub(crate) sha256: String,
    pub(crate) jpeg: Arc<Vec<u8>>,
}

/// What the heartbeat loop reports: the latest state of the render.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgressState {
    pub(crate) iteration: u32,
    pub(crate) total: u32,
    /// `None` until the first iteration.
    pub(crate) losses: Option<Losses>,
    pub(crate) preview: Option<Preview>,
}

/// The observer the worker gives the engine.
pub(crate) struct ProgressObserver {
    progress: watch::Sender<ProgressState>,
    cancel: Arc<AtomicBool>,
    preview_every: u32,
    interval: Duration,
    /// When the last preview was made; `None` before the first.
    last_preview: Option<Instant>,
}

impl ProgressObserver {
    /// Reports into `progress`; previews after the first iteration, then every
    /// `preview_every` iterations and at least every [`PREVIEW_INTERVAL`] (0 = never).
    pub(crate) fn new(
        progress: watch::Sender<ProgressState>,
        cancel: Arc<AtomicBool>,
        preview_every: u32,
    ) -> Self {
        Self {
            progress,
            cancel,
            preview_every,
            interval: PREVIEW_INTERVAL,
            last_preview: None,
        }
    }

    /// Whether a preview is due by time: none yet, or the last one is `interval` old.
    fn due(&self) -> bool {
        self.preview_every > 0
            && self
                .last_preview
                .is_none_or(|at| at.elapsed() >= self.interval)
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(CoreError::Cancelled.into())
        } else {
            Ok(())
        }
    }
}

/// The preview of `image`: longer side at most [`PREVIEW_SIDE`], JPEG.
pub(crate) fn preview_jpeg(image: &RgbImage) -> Result<Vec<u8>> {
    let side = image.width().max(image.height()).min(PREVIEW_SIDE);
    Ok(encode_jpeg(
        &resize_to_max_side(image, side),
        PREVIEW_QUALITY,
    )?)
}

impl Observer for ProgressObserver {
    fn iteration(&mut self, iteration: u32, total: u32, losses: &Losses) -> Result<()> {
        self.check_cancel()?;
        self.progress.send_modify(|s| {
            s.iteration = iteration;
            s.total = total;
            s.losses = Some(losses.clone());
        });
        Ok(())
    }

    fn snapshot(&mut self, iteration: u32, image: &RgbImage) -> Result<()> {
        self.check_cancel()?;
        if self.preview_every == 0 || !(iteration.is_multiple_of(self.preview_every) || self.due())
        {
            return Ok(());
        }
        self.last_preview = Some(Instant::now());
        // A preview that cannot be made is no reason to fail the render.
        match preview_jpeg(image) {
            Ok(jpeg) => {
                let preview = Preview {
                    iteration,
                    sha256: sha256_hex(&jpeg),
                    jpeg: Arc::new(jpeg),
                };
                self.progress.send_modify(|s| s.preview = Some(preview));
            }
            Err(e) => tracing::warn!(iter = iteration, "could not make a preview: {e}"),
        }
        Ok(())
    }

    fn wants_snapshot(&mut self, _iteration: u32) -> bool {
        self.due()
    }

    fn cancel_flag(&self) -> Option<Arc<AtomicBool>> {
        Some(self.cancel.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use image::Rgb;
    use stylefarm_core::image_io::{decode_image, DecodeLimits};
    use stylefarm_core::settings::RenderSettings;
    use stylefarm_engine::render::RenderInputs;

    use super::*;
    use crate::engine::{Engine, TaskInput};
    use crate::fake::FakeEngine;

    #[test]
    fn previews_every_n_iterations_small_and_jpeg() {
        let (tx, rx) = watch::channel(ProgressState::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let mut obs = ProgressObserver::new(tx, cancel, 4);
        let mut previews = Vec::new();
        let img = RgbImage::from_pixel(300, 200, Rgb([10, 200, 30]));
        for it in 1..=10 {
            obs.iteration(it, 10, &FakeEngine::losses(it)).unwrap();
            // The engine calls snapshot every save_iter; here every iteration, to check the
            // observer's own cadence too.
            obs.snapshot(it, &img).unwrap();
            if let Some(p) = &rx.borrow().preview {
                if previews.last() != Some(&p.iteration) {
                    previews.push(p.iteration);
                }
            }
        }
        // The first iteration's, then by count (the loop is faster than the interval).
        assert_eq!(previews, vec![1, 4, 8]);
        let state = rx.borrow().clone();
        assert_eq!((state.iteration, state.total), (10, 10));
        assert_eq!(state.losses, Some(FakeEngine::losses(10)));
        let p = state.preview.unwrap();
        assert_eq!(p.sha256, sha256_hex(&p.jpeg));
        assert_eq!(&p.jpeg[..2], &[0xff, 0xd8], "a JPEG");
        let decoded = decode_image(&p.jpeg, "preview", &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (256, 171));
    }

    #[test]
    fn previews_are_due_by_time_between_counted_ones() {
        let (tx, rx) = watch::channel(ProgressState::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let mut obs = ProgressObserver::new(tx, cancel, 1000);
        obs.interval = Duration::from_millis(30);
        let img = RgbImage::from_pixel(8, 8, Rgb([1, 2, 3]));
        let mut previews = Vec::new();
        for it in 1..=4 {
            if obs.wants_snapshot(it) {
                obs.snapshot(it, &img).unwrap();
                previews.push(rx.borrow().preview.as_ref().unwrap().iteration);
            }
            assert!(!obs.wants_snapshot(it), "just made one");
            std::thread::sleep(if it == 2 {
                Duration::from_millis(40)
            } else {
                Duration::ZERO
            });
        }
        // The first at once, the next once the interval has passed (after iteration 2).
        assert_eq!(previews, vec![1, 3]);
    }

    #[test]
    fn a_set_cancel_flag_stops_the_render_at_the_next_report() {
        let (tx, _rx) = watch::channel(ProgressState::default());
        let cancel = Arc::new(AtomicBool::new(true));
        let mut obs = ProgressObserver::new(tx, cancel, 1);
        assert!(obs.cancel_flag().unwrap().load(Ordering::Relaxed));
        let err = obs.iteration(1, 2, &Losses::default()).unwrap_err();
        assert!(err.is_cancelled());
    }

    #[test]
    fn with_an_engine_the_previews_follow_save_iter() {
        let (tx, mut rx) = watch::channel(ProgressState::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let mut obs = ProgressObserver::new(tx, cancel, 5);
        let task = TaskInput {
            inputs: RenderInputs {
                content: RgbImage::from_pixel(30, 60, Rgb([1, 2, 3])),
                styles: vec![RgbImage::new(4, 4)],
                init_image: None,
            },
            settings: RenderSettings {
                image_size: 60,
                num_iterations: 12,
                save_iter: 5,
                ..RenderSettings::default()
            },
            style_ids: vec![],
        };
        FakeEngine::new(Duration::ZERO)
            .run(&task, &mut obs)
            .unwrap();
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.iteration, 12);
        let p = state.preview.unwrap();
        assert_eq!(p.iteration, 10);
        // Smaller than the preview side: not enlarged.
        let decoded = decode_image(&p.jpeg, "preview", &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (30, 60));
    }
}
