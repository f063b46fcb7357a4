//! The shared records around a delegation, each in its own KV bucket: the platform
//! [`registry`], [`reputation`], and the [`task_board`] (each task's state).

pub mod registry;
pub mod reputation;
pub mod task_board;
pub mod witnessed_tasks;
