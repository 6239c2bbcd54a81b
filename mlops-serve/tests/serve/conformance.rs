//! The server suite of the conformance kit (`mlops_core::testkit::server`) on the
//! in-process model server, on a `RemoteServer` talking to it over HTTP, and on a
//! `RemoteServer` behind a v2 router that serves another `RemoteServer`: local and
//! remote behave the same.

use std::sync::Arc;

use mlops_core::Server;
use mlops_core::testkit;
use mlops_serve::RemoteServer;
use mlops_serve::http::{serve, v2_router};
use tokio::net::TcpListener;

use crate::common::Linear;
use crate::http::{open, start};

fn model() -> Linear {
    Linear {
        w: [1.0, -2.0],
        b: 0.5,
        delay_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_server_keeps_the_server_contract() {
    let running = start(&[model()], open(), None).await;
    testkit::server::conformance(&running.server, "fraud").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_server_keeps_the_same_contract() {
    let running = start(&[model()], open(), None).await;
    let remote = RemoteServer::new(&running.base).unwrap();
    testkit::server::conformance(&remote, "fraud").await;
}

/// `v2_router` serves any `Server`: here a `RemoteServer` in front of the model
/// server, reached by another `RemoteServer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_router_serves_any_server() {
    let running = start(&[model()], open(), None).await;
    let upstream: Arc<dyn Server> = Arc::new(RemoteServer::new(&running.base).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = v2_router(upstream, open()).unwrap();
    tokio::spawn(async move { serve(listener, app, &open(), std::future::pending()).await });
    let proxy = RemoteServer::new(&base).unwrap();
    testkit::server::conformance(&proxy, "fraud").await;
}

/// Serves `server` over gRPC without keys; the face's address.
async fn grpc_face(server: Arc<dyn Server>) -> String {
    use mlops_serve::grpc::{GrpcConfig, serve as serve_grpc};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = GrpcConfig::new(mlops_serve::KeyRing::default()).allow_unauthenticated();
    tokio::spawn(serve_grpc(
        listener,
        server,
        None,
        config,
        std::future::pending(),
    ));
    url
}

/// The same contract over gRPC: the model server behind the gRPC face, and
/// (the face serves any `Server`) a `RemoteServer` over HTTP behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_remote_server_keeps_the_same_contract() {
    use mlops_serve::grpc::GrpcRemoteServer;
    let running = start(&[model()], open(), None).await;
    let direct = grpc_face(Arc::new(running.server.clone())).await;
    testkit::server::conformance(&GrpcRemoteServer::new(&direct).unwrap(), "fraud").await;
    let upstream: Arc<dyn Server> = Arc::new(RemoteServer::new(&running.base).unwrap());
    let proxied = grpc_face(upstream).await;
    testkit::server::conformance(&GrpcRemoteServer::new(&proxied).unwrap(), "fraud").await;
}
