//! The planner's tests: the tasks each kind of job becomes, and the estimates.

use stylefarm_convert::settings_from_proto;

use super::*;

fn blob(n: u8) -> v1::BlobRef {
    v1::BlobRef {
        sha256: format!("{n:02x}").repeat(32),
        size: 10,
    }
}

fn job(frames: usize) -> v1::JobSpec {
    v1::JobSpec {
        content: (0..frames).map(|i| blob(i as u8)).collect(),
        styles: vec![blob(99)],
        settings: Some(v1::RenderSettings {
            image_size: Some(200),
            num_iterations: Some(10),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plan(job: &mut v1::JobSpec, dims: &[(u32, u32)], memory: u64) -> Result<Planned> {
    let settings = settings_from_proto(
        job.settings.as_ref().unwrap(),
        job.styles.len(),
        "spec.settings",
    )
    .unwrap();
    let names: Vec<String> = (0..dims.len()).map(|i| format!("f{i}.png")).collect();
    plan_tasks(
        job,
        &PlanInputs {
            settings: &settings,
            content_dims: dims,
            names: &names,
            farm: FarmSize {
                max_worker_memory: memory,
                workers: 2,
            },
            max_tasks: 400,
        },
    )
}

fn message(e: CoordinatorError) -> String {
    e.to_string()
}

#[test]
fn frames_are_one_task_each_and_temporal_chains_them() {
    let mut j = job(3);
    let p = plan(&mut j, &[(100, 50); 3], 0).unwrap();
    assert_eq!(p.tasks.len(), 3);
    assert!(p
        .tasks
        .iter()
        .all(|t| t.depends_on.is_empty() && !t.job_result));
    j.temporal = true;
    let p = plan(&mut j, &[(100, 50); 3], 0).unwrap();
    let deps: Vec<_> = p.tasks.iter().map(|t| t.depends_on.clone()).collect();
    assert_eq!(deps, vec![vec![], vec![0], vec![1]]);
    let mut single = job(1);
    let p = plan(&mut single, &[(100, 50)], 0).unwrap();
    assert!(p.tasks[0].job_result);
    assert_eq!((p.response.width, p.response.height), (200, 100));
}

#[test]
fn tiles_in_lock_step_are_statistics_a_shard_per_worker_and_the_driver() {
    let mut j = job(1);
    j.tiles = Some(v1::TileOptions {
        tile_size: 96,
        tile_overlap: 24,
    });
    // 200x150 in cores of at most 96 px spread evenly and aligned to relu5_1's 16 px
    // (columns at 0, 64, 128; rows at 0, 64), each seen with 24 px of context rounded up to
    // 32.
    let p = plan(&mut j, &[(400, 300)], 0).unwrap();
    assert_eq!((p.response.tile_columns, p.response.tile_rows), (3, 2));
    let contexts: Vec<_> = p
        .response
        .lockstep_tiles
        .iter()
        .map(|r| (r.x, r.y, r.width, r.height))
        .collect();
    assert_eq!(
        contexts,
        [
            (0, 0, 96, 96),
            (32, 0, 128, 96),
            (96, 0, 104, 96),
            (0, 32, 96, 118),
            (32, 32, 128, 118),
            (96, 32, 104, 118)
        ]
    );
    assert_eq!(p.tasks.len(), 1 + 2 + 1);
    let Some(Part::Statistics(st)) = &p.tasks[0].part else {
        panic!("not the statistics")
    };
    assert!(st.style_only && p.tasks[0].intermediate);
    for (i, shard) in p.tasks[1..3].iter().enumerate() {
        assert_eq!(
            shard.part,
            Some(Part::Shard(v1::Shard {
                index: i as u32,
                count: 2,
                full_width: 200,
                full_height: 150,
            }))
        );
        assert!(shard.intermediate && shard.depends_on == vec![0]);
    }
    let driver = &p.tasks[3];
    assert_eq!(
        driver.part,
        Some(Part::Assemble(v1::Assemble {
            kind: v1::AssembleKind::Lockstep as i32,
            full_width: 200,
            full_height: 150,
            tile_size: 96,
            margin: 24,
        }))
    );
    assert!(driver.job_result && !driver.intermediate && driver.depends_on == vec![0]);
    // The coordinator's memory: the image and L-BFGS's pairs for the 10 iterations.
    assert_eq!(p.response.tasks[3].estimated_memory_bytes, 0);
    assert_eq!(
        p.response.coordinator_memory_bytes,
        (2 * 10 + 6) * 12 * 200 * 150
    );
    // The statistics are about one evaluation of the whole image.
    let one = estimated_seconds(200, 150, 1);
    assert!((p.response.tasks[0].estimated_seconds - one).abs() < 1e-9);
    // A worker with the memory for the whole image takes it in one piece.
    let roomy = plan(&mut j, &[(400, 300)], 1 << 40).unwrap();
    let Some(Part::Statistics(st)) = &roomy.tasks[0].part else {
        panic!("not the statistics")
    };
    assert_eq!(st.piece_size, 0);
    assert_eq!(
        roomy.response.tasks[0].estimated_memory_bytes,
        estimated_memory_bytes(200, 150)
    );

    // An output no larger than a tile is not tiled.
    j.settings.as_mut().unwrap().image_size = Some(90);
    let p = plan(&mut j, &[(400, 300)], 0).unwrap();
    assert_eq!(p.tasks.len(), 1);
    assert!(matches!(p.tasks[0].part, Some(Part::Frame(_))));
}

#[test]
fn the_tile_size_follows_the_workers_memory() {
    let mut j = job(1);
    j.settings.as_mut().unwrap().image_size = Some(2048);
    // Enough for everything: no tiles.
    assert_eq!(
        plan(&mut j, &[(2048, 2048)], 1 << 40).unwrap().tasks.len(),
        1
    );
    // 1 GiB: tiles that fit.
    let p = plan(&mut j, &[(2048, 2048)], 1 << 30).unwrap();
    let t = p.response.tiles.unwrap();
    assert!(t.tile_size >= MIN_TILE_SIZE && t.tile_size < 2048, "{t:?}");
    // The job's spec shows the tiles it got.
    assert_eq!(p.picked_tiles, Some(t));
    // Every task fits, the statistics' pieces included.
    assert!(p
        .tasks
        .iter()
        .any(|t| matches!(t.part, Some(Part::Statistics(_)))));
    for task in &p.response.tasks {
        assert!(task.estimated_memory_bytes <= 1 << 30);
    }
    // Not even a small tile fits.
    let mut j = job(1);
    j.settings.as_mut().unwrap().image_size = Some(2048);
    let e = plan(&mut j, &[(2048, 2048)], 1 << 20).unwrap_err();
    assert!(matches!(e, CoordinatorError::LimitExceeded(_)), "{e}");
}

#[test]
fn a_sweep_is_a_grid_and_a_contact_sheet() {
    let mut j = job(1);
    j.sweeps = vec![
        v1::Sweep {
            parameter: "style-weight".into(),
            values: vec!["10".into(), "100".into(), "1000".into()],
        },
        v1::Sweep {
            parameter: "style-scale".into(),
            values: vec!["0.5".into(), "1".into()],
        },
    ];
    let p = plan(&mut j, &[(100, 100)], 0).unwrap();
    assert_eq!(p.tasks.len(), 7);
    assert_eq!(
        p.tasks[0].output_name,
        "f0_style-weight=10_style-scale=0.5.png"
    );
    assert_eq!(
        p.tasks[5].output_name,
        "f0_style-weight=1000_style-scale=1.png"
    );
    let s = p.tasks[5].settings.as_ref().unwrap();
    assert_eq!((s.style_weight, s.style_scale), (Some(1000.0), Some(1.0)));
    let sheet = &p.tasks[6];
    assert_eq!(sheet.depends_on, (0..6).collect::<Vec<u32>>());
    assert!(sheet.job_result);
    assert_eq!(sheet.output_name, "f0_sweep.png");
}

#[test]
fn stages_chain_at_increasing_sizes() {
    let mut j = job(1);
    j.scales = Some(v1::Scales {
        sizes: vec![50, 100, 200],
        iterations: vec![5, 4, 3],
    });
    let p = plan(&mut j, &[(100, 80)], 0).unwrap();
    let got: Vec<_> = p
        .tasks
        .iter()
        .map(|t| {
            let s = t.settings.as_ref().unwrap();
            (
                s.image_size.unwrap(),
                s.num_iterations.unwrap(),
                t.depends_on.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(50, 5, vec![]), (100, 4, vec![0]), (200, 3, vec![1])]
    );
    assert!(p.tasks[2].job_result && !p.tasks[2].intermediate);
    assert!(p.tasks[0].intermediate);
}

#[test]
fn bad_plans_name_the_field() {
    type Change = Box<dyn Fn(&mut v1::JobSpec)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|j| {
                j.tiles = Some(v1::TileOptions {
                    tile_size: 128,
                    tile_overlap: 128,
                })
            }),
            "invalid spec.tiles.tile_overlap: 128 px is not smaller",
        ),
        (
            Box::new(|j| {
                j.tiles = Some(v1::TileOptions {
                    tile_size: 8,
                    tile_overlap: 0,
                })
            }),
            "invalid spec.tiles.tile_size",
        ),
        (
            Box::new(|j| {
                j.sweeps = vec![v1::Sweep {
                    parameter: "colour".into(),
                    values: vec!["1".into()],
                }]
            }),
            "invalid spec.sweeps[0].parameter: `colour` cannot be swept",
        ),
        (
            Box::new(|j| {
                j.sweeps = vec![v1::Sweep {
                    parameter: "style-weight".into(),
                    values: vec!["lots".into()],
                }]
            }),
            "invalid spec.sweeps[0].values[0]",
        ),
        (
            Box::new(|j| {
                j.sweeps = vec![v1::Sweep {
                    parameter: "style-weight".into(),
                    values: vec!["-1".into()],
                }]
            }),
            "invalid spec.sweeps (style-weight=-1)",
        ),
        (
            Box::new(|j| {
                j.scales = Some(v1::Scales {
                    sizes: vec![100, 100, 200],
                    iterations: vec![],
                })
            }),
            "invalid spec.scales.sizes: sizes must increase",
        ),
        (
            Box::new(|j| {
                j.scales = Some(v1::Scales {
                    sizes: vec![100, 150],
                    iterations: vec![],
                })
            }),
            "invalid spec.scales.sizes: the last stage's size (150)",
        ),
        (
            Box::new(|j| {
                j.temporal = true;
                j.tiles = Some(v1::TileOptions {
                    tile_size: 128,
                    tile_overlap: 0,
                });
            }),
            "invalid spec.temporal: temporal rendering cannot be combined with tiles",
        ),
    ];
    for (change, expected) in cases {
        let mut j = job(1);
        change(&mut j);
        let e = message(plan(&mut j, &[(100, 100)], 0).unwrap_err());
        assert!(e.starts_with(expected), "{e}\nexpected {expected}");
    }
}
