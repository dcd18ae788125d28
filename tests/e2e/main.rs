//! End-to-end tests: the real `hone` binary on a free port, against the real Postgres
//! (a fresh database per test), real libtorch and the real pretrained base model.
//! Set TEST_LOG=1 to see the server's logs.

mod api;
mod cli;
mod commit;
mod connections;
mod docs;
mod errors;
mod export;
mod fuzz;
mod image_files;
mod image_predict;
mod images;
mod int8;
mod isolation;
mod keys;
mod kill;
mod limits;
mod live_events;
mod load;
mod openai_sdk;
mod outage;
mod pairs;
mod private_postgres;
mod prometheus;
mod raw;
mod receiver;
#[path = "../s3_server.rs"]
mod s3_server;
mod sentiment;
mod shutdown;
mod strategies;
mod support;
mod sweep;
mod tasks;
mod usage;
// hone-train's test images (Fashion-MNIST as PNGs); this binary reads no digits.
#[path = "../../crates/hone-train/tests/it/test_images.rs"]
#[allow(dead_code)]
mod test_images;
mod transferability;
mod ui;
mod uploads;
mod webhooks;
