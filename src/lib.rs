//! mqtt-video: live video from any allowed source, fragmented MP4 in memory, for browsers over MQTT.

pub mod bench;
pub mod config;
pub mod media;
pub mod server;
pub mod talk;
