//! Part 4's integration tests, against the real stack (`./lab up`):
//! RabbitMQ, Redis and MariaDB, each test isolated by a unique queue name,
//! key prefix and database.

mod bake;
mod bin;
mod browser;
mod changes;
mod demo;
mod fanout;
mod http;
mod live;
mod queue;
mod rabbitmq;
mod redis;
mod support;
mod worker;
