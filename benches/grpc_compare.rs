//! The gRPC face beside the gRPC floor and our HTTP face, one run, one process:
//!
//! ```text
//! cargo bench --bench grpc_compare --features grpc [-- SECONDS]
//! ```
//!
//! - the floor: a tonic `GRPCInferenceService` whose ModelInfer decodes the
//!   request and answers a prebuilt response (no model, no checks);
//! - ours over gRPC: `mlops_serve::grpc::serve` of the model server, the
//!   20->64->64->1 MLP of the serving benchmark, raw tensors as Triton's
//!   clients send them (20 FP32 inputs of N rows);
//! - ours over HTTP: the same server's v2 JSON face (`RemoteServer`).
//!
//! The load generator is tonic's client (and `RemoteServer` for HTTP): 16
//! requests in flight for SECONDS (default 4) after 1 s of warm-up, 1 row and
//! 1024 rows. With `taskset` and two cores it runs as a process of its own on
//! core 1, this process's servers pinned to core 0 with one runtime worker, so
//! the client never takes the servers' core; it is not the bottleneck when the
//! floor answers clearly more than ours with the same client.

#[path = "support/mlp_data.rs"]
mod mlp_data;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlops::core::inference::{InferenceRequest, Tensor, TensorData};
use mlops::core::model::VersionSelector;
use mlops::core::{ModelRegistry, Server, Task, Trainer};
use mlops::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use mlops::serve::grpc::proto::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use mlops::serve::grpc::proto::{self as pb, model_infer_request::InferInputTensor};
use mlops::serve::grpc::{GrpcConfig, serve as serve_grpc};
use mlops::serve::http::{router, serve as serve_http};
use mlops::serve::{DeploymentConfig, HttpConfig, KeyRing, ModelServer, RemoteServer, Routing};
use mlops::store::{ObjectRegistry, StoreRoot};
use mlops::train::{ModelSpec, Progress, TabularLoader, TabularTrainer, TrainConfig};
use tonic::{Request, Response, Status};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN_FLIGHT: usize = 16;

/// `rows` rows of the 20 inputs, raw (as tritonclient.grpc sends them).
fn grpc_request(rows: usize) -> pb::ModelInferRequest {
    let mut raw = Vec::new();
    let inputs = (0..20)
        .map(|f| {
            let values: Vec<u8> = (0..rows)
                .flat_map(|i| (((i * 7 + f) % 13) as f32 / 13.0 - 0.5).to_le_bytes())
                .collect();
            raw.push(values);
            InferInputTensor {
                name: format!("x{f}"),
                datatype: "FP32".into(),
                shape: vec![rows as i64],
                ..Default::default()
            }
        })
        .collect();
    pb::ModelInferRequest {
        model_name: "fraud".into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn http_request(rows: usize) -> InferenceRequest {
    InferenceRequest::new(
        (0..20)
            .map(|f| {
                let values: Vec<f32> = (0..rows)
                    .map(|i| ((i * 7 + f) % 13) as f32 / 13.0 - 0.5)
                    .collect();
                Tensor::new(format!("x{f}"), vec![rows], TensorData::Fp32(values))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect(),
    )
}

/// The gRPC floor: decodes the request, answers the prebuilt response for its
/// size (one row, or many).
#[derive(Debug, Clone)]
struct Floor {
    one: Arc<pb::ModelInferResponse>,
    many: Arc<pb::ModelInferResponse>,
}

#[tonic::async_trait]
impl GrpcInferenceService for Floor {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let request = std::hint::black_box(request.into_inner());
        let many = request
            .inputs
            .first()
            .and_then(|i| i.shape.first())
            .is_some_and(|&n| n > 1);
        Ok(Response::new(if many {
            (*self.many).clone()
        } else {
            (*self.one).clone()
        }))
    }
    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

/// A client of the gRPC server at `url`, taking answers up to 64 MiB.
async fn client(url: &str) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    // As tritonclient.grpc and our GrpcRemoteServer: no Nagle delay, windows
    // for megabytes.
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap_or_else(|e| panic!("{e}"))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    GrpcInferenceServiceClient::new(channel)
}

/// Requests per second of `call` with IN_FLIGHT at once for `seconds`, after
/// a second of warm-up.
async fn rate<F, Fut>(seconds: f64, call: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let count = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs(1) + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (call, count, counting) = (call.clone(), count.clone(), counting.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    call().await;
                    if counting.load(Ordering::Relaxed) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Requests per second against `url` of `kind` (`grpc`: a gRPC server of the
/// protocol, ours or the floor; `http`: our HTTP JSON face) at `rows` rows.
async fn measure(kind: &str, url: &str, rows: usize, seconds: f64) -> f64 {
    if kind == "http" {
        let remote = RemoteServer::new(url).unwrap_or_else(|e| panic!("{e}"));
        let request = Arc::new(http_request(rows));
        return rate(seconds, move || {
            let (c, r) = (remote.clone(), (*request).clone());
            async move {
                c.infer("fraud", None, r)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        })
        .await;
    }
    let c = client(url).await.max_decoding_message_size(64 << 20);
    let request = Arc::new(grpc_request(rows));
    rate(seconds, move || {
        let (mut c, r) = (c.clone(), (*request).clone());
        async move {
            c.model_infer(r).await.unwrap_or_else(|e| panic!("{e}"));
        }
    })
    .await
}

/// Whether the load generator runs as its own process on core 1, the servers
/// on core 0 (taskset and two cores present), rather than in this process.
fn split() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Runs the load generator for one measurement: a child process on core 1
/// when `split`, else here.
async fn load(split: bool, kind: &str, url: &str, rows: usize, seconds: f64) -> f64 {
    if !split {
        return measure(kind, url, rows, seconds).await;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let (kind, url) = (kind.to_owned(), url.to_owned());
    // The child runs off the servers' only worker: waiting here must not
    // stop them.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("taskset")
            .args(["-c", "1"])
            .arg(exe)
            .args([
                "--load",
                &kind,
                &url,
                &rows.to_string(),
                &seconds.to_string(),
            ])
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        // The load generator's process: one measurement, its rate on stdout.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (kind, url) = (args[2].clone(), args[3].clone());
        let rows: usize = args[4].parse().unwrap_or_else(|e| panic!("{e}"));
        let seconds: f64 = args[5].parse().unwrap_or_else(|e| panic!("{e}"));
        println!("{}", runtime.block_on(measure(&kind, &url, rows, seconds)));
        return;
    }
    let split = split();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if split {
        // The servers on core 0, as in a one-CPU pod: one runtime worker.
        let pinned = std::process::Command::new("taskset")
            .args(["-pc", "0", &std::process::id().to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(pinned, "taskset could not pin the servers to core 0");
        runtime.worker_threads(1);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(serve_and_measure(split));
}

async fn serve_and_measure(split: bool) {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(4.0);
    // The model and its server.
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::mlp([64, 64]));
    c.epochs = 1;
    c.progress = Progress::Hidden;
    let trained = TabularTrainer::new(c)
        .fit(&mlp_data::data(5000), "label")
        .unwrap_or_else(|e| panic!("{e}"));
    let registry = Arc::new(ObjectRegistry::new(
        &StoreRoot::open("memory://").unwrap_or_else(|e| panic!("{e}")),
    ));
    registry
        .register("fraud", trained.artifact, trained.metadata)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    server
        .deploy(DeploymentConfig::new(
            "fraud",
            "fraud",
            Routing::Fixed(VersionSelector::Latest),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bind = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Ours over gRPC and HTTP, the floor over gRPC.
    let l = bind().await;
    let ours_grpc = format!(
        "http://{}",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let config = GrpcConfig::new(KeyRing::default()).allow_unauthenticated();
    let s: Arc<dyn Server> = Arc::new(server.clone());
    tokio::spawn(serve_grpc(l, s, None, config, std::future::pending()));
    let l = bind().await;
    let ours_http = format!(
        "http://{}",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let http = HttpConfig::default().allow_unauthenticated();
    let app = router(server.clone(), http.clone()).unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { serve_http(l, app, &http, std::future::pending()).await });
    let l = bind().await;
    let floor_url = format!(
        "http://{}",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    println!(
        "gRPC face against its floor and our HTTP face; {IN_FLIGHT} in flight, {seconds} s each; {}",
        if split {
            "servers on core 0 (one runtime worker), load generator on core 1 (its own process)"
        } else {
            "servers and load generator in one process (no taskset or one core)"
        }
    );
    println!("{:<34} {:>12} {:>14}", "server", "req/s", "rows/s");
    // The floor answers what ours answers, for each size.
    let mut probe = client(&ours_grpc).await.max_decoding_message_size(64 << 20);
    let mut answer = async |rows| {
        Arc::new(
            probe
                .model_infer(grpc_request(rows))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .into_inner(),
        )
    };
    let floor_service = Floor {
        one: answer(1).await,
        many: answer(1024).await,
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .add_service(
                GrpcInferenceServiceServer::new(floor_service)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
            )
            .await
    });
    for rows in [1usize, 1024] {
        let floor_rate = load(split, "grpc", &floor_url, rows, seconds).await;
        let grpc_rate = load(split, "grpc", &ours_grpc, rows, seconds).await;
        let http_rate = load(split, "http", &ours_http, rows, seconds).await;
        let n = rows as f64;
        println!(
            "{:<34} {:>12.0} {:>14.0}",
            format!("gRPC floor, {rows} rows"),
            floor_rate,
            floor_rate * n
        );
        println!(
            "{:<34} {:>12.0} {:>14.0}",
            format!("mlops gRPC, {rows} rows"),
            grpc_rate,
            grpc_rate * n
        );
        println!(
            "{:<34} {:>12.0} {:>14.0}",
            format!("mlops HTTP JSON, {rows} rows"),
            http_rate,
            http_rate * n
        );
        println!(
            "  {rows} rows: gRPC = {:.0}% of its floor; gRPC / HTTP JSON = {:.2}x",
            100.0 * grpc_rate / floor_rate,
            grpc_rate / http_rate
        );
    }
}
