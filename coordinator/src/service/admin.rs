//! `stylefarm.v1.AdminService`: the workers and the queue at a glance.

use stylefarm_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl AdminService for Api {
    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let workers = self
            .state
            .call(|c| {
                let now = c.now_ms();
                Ok(c.sched
                    .workers()
                    .into_iter()
                    .map(|w| v1::WorkerInfo {
                        id: w.id.to_string(),
                        name: w.name.clone(),
                        capabilities: Some(w.capabilities.clone()),
                        last_seen_unix_ms: w.last_seen_ms,
                        current_task_id: w.current_task.map(|t| t.to_string()).unwrap_or_default(),
                        tasks_done: w.tasks_done,
                        tasks_failed: w.tasks_failed,
                        live: c.sched.is_live(w, now),
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn queue_stats(
        &self,
        _request: Request<v1::QueueStatsRequest>,
    ) -> Result<Response<v1::QueueStatsResponse>, Status> {
        let stats = self
            .state
            .call(|c| {
                let now = c.now_ms();
                Ok(c.sched.stats(now))
            })
            .await?;
        Ok(Response::new(stats))
    }
}
