//! Coarse-to-fine stages: per frame, a chain of renders at increasing sizes, each starting
//! from the one before.

use stylefarm_core::image_io::fit_max_side;
use stylefarm_core::settings::{MAX_IMAGE_SIZE, MIN_STAGE_SIZE};
use stylefarm_proto::v1::{self, task_spec::Part};

use super::{invalid, suffixed, Builder};
use crate::error::Result;

/// Per frame, a chain of stages at increasing sizes.
pub(super) fn plan_stages(
    b: &mut Builder<'_>,
    wire: &v1::RenderSettings,
    scales: &v1::Scales,
) -> Result<()> {
    let sizes = &scales.sizes;
    if sizes.is_empty() {
        return Err(invalid(
            "spec.scales.sizes",
            "iterations per stage need the stages' sizes",
        ));
    }
    if let Some(bad) = sizes
        .iter()
        .find(|s| !(MIN_STAGE_SIZE..=MAX_IMAGE_SIZE).contains(*s))
    {
        return Err(invalid(
            "spec.scales.sizes",
            format!("{bad} px is outside {MIN_STAGE_SIZE}..={MAX_IMAGE_SIZE}"),
        ));
    }
    if sizes.windows(2).any(|p| p[1] <= p[0]) {
        return Err(invalid(
            "spec.scales.sizes",
            format!(
                "sizes must increase from stage to stage, not {}",
                sizes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    }
    let output = b.inputs.settings.image_size;
    if sizes.last() != Some(&output) {
        return Err(invalid(
            "spec.scales.sizes",
            format!(
                "the last stage's size ({}) must be the output's image size ({output})",
                sizes.last().copied().unwrap_or(0)
            ),
        ));
    }
    let iterations: Vec<u32> = match scales.iterations.as_slice() {
        [] => vec![b.inputs.settings.num_iterations; sizes.len()],
        [one] => vec![*one; sizes.len()],
        many if many.len() == sizes.len() => many.to_vec(),
        many => {
            return Err(invalid(
                "spec.scales.iterations",
                format!("{} values for {} stages", many.len(), sizes.len()),
            ))
        }
    };
    if let Some(bad) = iterations
        .iter()
        .find(|&&i| i > stylefarm_core::settings::MAX_ITERATIONS)
    {
        return Err(invalid(
            "spec.scales.iterations",
            format!(
                "{bad} is over the limit of {}",
                stylefarm_core::settings::MAX_ITERATIONS
            ),
        ));
    }
    let frames = b.inputs.content_dims.len();
    let count = sizes.len() as u32;
    for frame in 0..frames {
        let (cw, ch) = b.inputs.content_dims[frame];
        let name = b.inputs.names[frame].clone();
        let mut previous = None;
        for (k, (&size, &iters)) in sizes.iter().zip(&iterations).enumerate() {
            let settings = v1::RenderSettings {
                image_size: Some(size),
                num_iterations: Some(iters),
                ..wire.clone()
            };
            let last = k + 1 == sizes.len();
            let output_name = if last {
                name.clone()
            } else {
                suffixed(&name, &format!("_stage{k}_{size}"))
            };
            let part = Part::Stage(v1::Stage {
                index: k as u32,
                count,
            });
            let i = b.push(
                frame,
                settings,
                part,
                output_name,
                fit_max_side(cw, ch, size),
            );
            let spec = b.last();
            spec.intermediate = !last;
            spec.job_result = last && frames == 1;
            if let Some(p) = previous {
                spec.depends_on = vec![p];
            }
            previous = Some(i);
        }
        b.check_count()?;
    }
    Ok(())
}
