//! Worker pools: tasks go only to workers of the device they ask for, and the running tally
//! of tasks by state and pool (the metrics' and the autoscaler's numbers) follows every move.

use std::time::Duration;

use super::tests::{Farm, LEASE};
use super::*;

impl Farm {
    fn worker_on(&mut self, device: v1::Device) -> WorkerId {
        let now = self.now();
        let caps = v1::Capabilities {
            device: device as i32,
            ..Default::default()
        };
        self.s.register_worker("w".into(), caps, now)
    }

    fn job_on(&mut self, device: v1::Device, tasks: usize, max_attempts: u32) -> JobId {
        let spec = v1::JobSpec {
            device: device as i32,
            max_attempts,
            ..Default::default()
        };
        let task_specs = (0..tasks)
            .map(|i| v1::TaskSpec {
                output_name: format!("frame_{i:04}.png"),
                device: device as i32,
                ..Default::default()
            })
            .collect();
        let now = self.now();
        self.s.submit(JobId::new(), spec, task_specs, now).unwrap()
    }
}

#[test]
fn tasks_go_only_to_workers_of_the_device_they_ask_for() {
    let mut f = Farm::new();
    let cpu = f.worker_on(v1::Device::Cpu);
    let cuda = f.worker_on(v1::Device::Cuda);
    let unsaid = f.worker_on(v1::Device::Unspecified);
    let gpu_job = f.job_on(v1::Device::Cuda, 1, 0);
    assert!(f.lease(cpu).is_none(), "a CPU worker took a CUDA task");
    assert!(
        f.lease(unsaid).is_none(),
        "a worker of no device took a CUDA task"
    );
    let g = f.lease(cuda).expect("the CUDA worker takes the CUDA task");
    assert_eq!(f.task(g.task).job, gpu_job);
    f.complete(g.lease).unwrap();

    f.job_on(v1::Device::Cpu, 1, 0);
    assert!(f.lease(cuda).is_none(), "a CUDA worker took a CPU task");
    let g = f
        .lease(unsaid)
        .expect("a worker of no device is a CPU worker");
    f.complete(g.lease).unwrap();

    f.job_on(v1::Device::Unspecified, 2, 0);
    let g = f.lease(cuda).expect("a task of no device runs anywhere");
    f.complete(g.lease).unwrap();
    let g = f.lease(cpu).expect("a task of no device runs anywhere");
    f.complete(g.lease).unwrap();
}

#[test]
fn the_tally_follows_each_pool_and_counts_expiries_retries_and_blocklistings() {
    let mut f = Farm::new();
    let gpu = f.worker_on(v1::Device::Cuda);
    let cpu = f.worker_on(v1::Device::Cpu);
    let cuda_job = f.job_on(v1::Device::Cuda, 2, 5);
    let cpu_job = f.job_on(v1::Device::Cpu, 1, 0);
    let t = f.s.tally();
    assert_eq!((t.demand(Pool::Cuda), t.demand(Pool::Cpu)), (2, 1));
    assert_eq!(t.queue_depth(Pool::Cuda), 2);
    assert_eq!(t.jobs, [2, 0, 0, 0, 0]);

    // Leased work still wants its worker: the demand stays, the queue shrinks.
    let g = f.lease(gpu).unwrap();
    let t = f.s.tally();
    assert_eq!((t.demand(Pool::Cuda), t.queue_depth(Pool::Cuda)), (2, 1));
    assert_eq!(t.tasks_in(Pool::Cuda, "leased"), 1);
    f.update(g.lease).unwrap();
    assert_eq!(f.s.tally().tasks_in(Pool::Cuda, "running"), 1);
    assert_eq!(f.job_state(cuda_job), JobState::Active);

    // Three failures of the job's tasks on one worker (two reported, a lapsed lease): each
    // is retried, and the worker is set aside for the job.
    f.fail(g.lease, FailureKind::Application).unwrap();
    let g = f.lease(gpu).unwrap();
    f.fail(g.lease, FailureKind::Application).unwrap();
    f.lease(gpu).expect("a task again, where it failed before");
    assert_eq!(f.expire_after(LEASE + Duration::from_secs(1)), 1);
    let counted = f.s.take_counted();
    assert_eq!(
        counted,
        Counted {
            lease_expiries: 1,
            retries: 3,
            blocklistings: 1,
        }
    );
    assert_eq!(f.s.take_counted(), Counted::default(), "taken once");
    assert!(f.lease(gpu).is_none(), "blocklisted for the job");
    let t = f.s.tally();
    assert_eq!((t.demand(Pool::Cuda), t.queue_depth(Pool::Cuda)), (2, 2));
    assert_eq!(t.tasks_in(Pool::Cuda, "soft_failed"), 2);

    let g = f.lease(cpu).unwrap();
    f.complete(g.lease).unwrap();
    assert_eq!(f.job_state(cpu_job), JobState::Completed);
    let t = f.s.tally();
    assert_eq!(t.demand(Pool::Cpu), 0);
    assert_eq!(t.tasks_in(Pool::Cpu, "succeeded"), 1);
    assert_eq!(t.jobs, [0, 1, 1, 0, 0]);

    f.s.cancel(cuda_job, f.now()).unwrap();
    assert_eq!(f.job_state(cuda_job), JobState::Canceled);
    f.s.delete(cuda_job).unwrap();
    let t = f.s.tally();
    assert_eq!(t.demand(Pool::Cuda), 0);
    assert_eq!(t.tasks_in(Pool::Cuda, "canceled"), 0);
    assert_eq!(t.jobs, [0, 0, 1, 0, 0]);
}
