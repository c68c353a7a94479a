//! What crosses a stage's ports: the stream items (`batch`), the Arrow tables of the
//! artifacts (`tables`, and a frozen backbone's `tokens`), and stored networks
//! (`checkpoint`).

pub mod batch;
pub mod checkpoint;
pub mod knn_table;
pub mod lloyd_rounds;
pub mod ports;
pub mod tables;
pub mod tokens;
