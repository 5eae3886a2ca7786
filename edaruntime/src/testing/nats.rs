//! Real `nats-server` processes for tests (being written).

/// A single `nats-server` with JetStream (being written).
#[derive(Debug)]
pub struct NatsServer;

/// A three-node JetStream cluster (being written).
#[derive(Debug)]
pub struct NatsCluster;

/// Why a test server could not start (being written).
#[derive(Debug)]
pub struct TestServerError;
