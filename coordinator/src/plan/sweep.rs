//! A parameter sweep's tasks: one per point of the grid of values, and the contact sheet of
//! them all.

use std::collections::HashSet;

use stylefarm_convert::settings_from_proto;
use stylefarm_core::image_io::fit_max_side;
use stylefarm_proto::v1::{self, task_spec::Part};

use super::{invalid, suffixed, Builder, SWEEP_PARAMETERS};
use crate::error::{CoordinatorError, Result};

/// One value of a sweep applied to the wire settings.
fn apply_sweep(
    s: &mut v1::RenderSettings,
    parameter: &str,
    value: &str,
    field: &str,
) -> Result<()> {
    fn num<T: std::str::FromStr>(value: &str, field: &str) -> Result<T> {
        value.trim().parse().map_err(|_| {
            invalid(
                field,
                format!("`{value}` is not a number of the right kind"),
            )
        })
    }
    match parameter {
        "content-weight" => s.content_weight = Some(num(value, field)?),
        "style-weight" => s.style_weight = Some(num(value, field)?),
        "tv-weight" => s.tv_weight = Some(num(value, field)?),
        "style-scale" => s.style_scale = Some(num(value, field)?),
        "learning-rate" => s.learning_rate = Some(num(value, field)?),
        "num-iterations" => s.num_iterations = Some(num(value, field)?),
        "image-size" => s.image_size = Some(num(value, field)?),
        "seed" => s.seed = num(value, field)?,
        other => {
            return Err(invalid(
                field,
                format!(
                    "`{other}` cannot be swept; one of {}",
                    SWEEP_PARAMETERS.join(", ")
                ),
            ))
        }
    }
    Ok(())
}

/// One task per point of the grid of sweep values, then a contact sheet of them all.
pub(super) fn plan_sweep(b: &mut Builder<'_>, wire: &v1::RenderSettings) -> Result<()> {
    let job = b.job;
    if job.content.len() != 1 {
        return Err(invalid(
            "spec.sweeps",
            format!(
                "a sweep renders one content image, not {}",
                job.content.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut points = 1usize;
    for (i, sweep) in job.sweeps.iter().enumerate() {
        let field = format!("spec.sweeps[{i}].parameter");
        if !SWEEP_PARAMETERS.contains(&sweep.parameter.as_str()) {
            let shown: String = sweep.parameter.chars().take(40).collect();
            return Err(invalid(
                field,
                format!(
                    "`{shown}` cannot be swept; one of {}",
                    SWEEP_PARAMETERS.join(", ")
                ),
            ));
        }
        if !seen.insert(sweep.parameter.as_str()) {
            return Err(invalid(
                field,
                format!("`{}` is swept twice", sweep.parameter),
            ));
        }
        if sweep.values.is_empty() {
            return Err(invalid(
                format!("spec.sweeps[{i}].values"),
                "a sweep needs at least one value",
            ));
        }
        points = points.saturating_mul(sweep.values.len());
    }
    if points + 1 > b.inputs.max_tasks {
        return Err(CoordinatorError::LimitExceeded(format!(
            "the sweep has {points} points, over the limit of {} tasks per job",
            b.inputs.max_tasks
        )));
    }
    let (cw, ch) = b.inputs.content_dims[0];
    let name = b.inputs.names[0].clone();
    let mut indices = Vec::with_capacity(points);
    for p in 0..points {
        // Mixed radix: the last sweep varies fastest.
        let mut rest = p;
        let mut picks = vec![0; job.sweeps.len()];
        for (k, sweep) in job.sweeps.iter().enumerate().rev() {
            picks[k] = rest % sweep.values.len();
            rest /= sweep.values.len();
        }
        let mut settings = wire.clone();
        let mut values = std::collections::HashMap::new();
        let mut label = String::new();
        for (k, sweep) in job.sweeps.iter().enumerate() {
            let value = sweep.values[picks[k]].trim().to_string();
            let field = format!("spec.sweeps[{k}].values[{}]", picks[k]);
            apply_sweep(&mut settings, &sweep.parameter, &value, &field)?;
            label.push_str(&format!("_{}={value}", sweep.parameter));
            values.insert(sweep.parameter.clone(), value);
        }
        let checked = settings_from_proto(&settings, job.styles.len(), "spec.settings")
            .map_err(|e| invalid(format!("spec.sweeps ({})", &label[1..]), e.to_string()))?;
        let out = fit_max_side(cw, ch, checked.image_size);
        let i = b.push(
            0,
            settings,
            Part::Sweep(v1::SweepPoint { values }),
            suffixed(&name, &label),
            out,
        );
        indices.push(i);
    }
    let part = Part::Assemble(v1::Assemble {
        kind: v1::AssembleKind::ContactSheet as i32,
        ..Default::default()
    });
    b.push(0, wire.clone(), part, suffixed(&name, "_sweep"), (0, 0));
    let sheet = b.last();
    sheet.depends_on = indices;
    sheet.job_result = true;
    Ok(())
}
