//! librdkafka's producer with a future per message, whose delivery reports are served by a
//! thread that sleeps until there are some.
//!
//! rdkafka's `FutureProducer` serves them from a thread that calls `BaseProducer::poll(100 ms)`
//! in a loop, and that call spins through the last fraction of a millisecond of each wait (it
//! asks librdkafka's queue again and again with the remaining time rounded down to 0 ms). That
//! cost an idle worker about 15 ms of CPU a second (1.5 % of a core, per producer) and, under a
//! 1,000/s sender limit, about 12 µs per send (`perf` on `otp load --embedded`, as
//! docs/performance.md "Profiling" says). Here librdkafka itself says when its queue stops
//! being empty
//! (`rd_kafka_queue_cb_event_enable`: a callback, called under the queue's lock),
//! and the thread then takes what is there without waiting. Everything else is librdkafka's
//! and rdkafka's: the same `BaseProducer`, the same delivery results. (The callback runs on
//! whichever thread enqueues: librdkafka's own, or one that sends or purges.)
//!
//! [`crate::session::ProducerSession`] holds one of these; the writer, the publisher and the
//! receipts ingress send through it.

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer as _, ProducerContext,
};
use rdkafka::util::IntoOpaque;
use rdkafka::{ClientConfig, ClientContext, Timestamp};
use std::os::raw::c_void;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the thread sleeps when nothing wakes it: only a bound (a stop wakes it too).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Events served in a row before the thread looks at its stop flag again.
const MAX_RUN: usize = 10_000;
/// How long a send waits between tries while librdkafka's queue is full (as `FutureProducer`).
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(100);

/// A Kafka producer; clones share one librdkafka producer and its thread, which stop when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

struct Shared {
    base: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    pub fn create(config: &ClientConfig) -> KafkaResult<Self> {
        Self::with_idle_wait(config, IDLE_WAIT)
    }

    /// [`Producer::create`] with the thread's sleep bound set: the tests make it an hour, so
    /// that a report served only when the bound runs out cannot pass for a woken thread.
    #[doc(hidden)]
    pub fn with_idle_wait(config: &ClientConfig, idle_wait: Duration) -> KafkaResult<Self> {
        let base: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, started) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-delivery".to_string())
                .spawn(move || serve(&base, &stop, idle_wait, serving))
                .map_err(|e| KafkaError::ClientCreation(format!("delivery thread: {e}")))?
        };
        // Returned once librdkafka will wake the thread, so that no report waits for a timeout.
        let _ = started.recv();
        Ok(Self {
            shared: Arc::new(Shared {
                base,
                stop,
                thread: Some(thread),
            }),
        })
    }

    /// Queue `record` and wait for its delivery report. While librdkafka's queue is full, it
    /// is offered again every 100 ms for up to `queue_timeout` (then `QueueFull`).
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = Instant::now();
        let topic = record.topic;
        let (tx, rx) = oneshot::channel();
        let mut record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(tx),
        };
        loop {
            match self.shared.base.send(record) {
                Ok(()) => {
                    // librdkafka reports every message (unless told to report only errors, which
                    // no caller may: it would leave this waiting for its caller's bound).
                    return match rx.await {
                        Ok(report) => report,
                        Err(_) => {
                            let message = OwnedMessage::new(
                                None,
                                None,
                                topic.to_string(),
                                Timestamp::NotAvailable,
                                -1,
                                0,
                                None,
                            );
                            Err((KafkaError::Canceled, message))
                        }
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < queue_timeout =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((e, back)) => return Err((e, unsent(back))),
            }
        }
    }

    /// Wait up to `timeout` for every queued message's delivery report.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.shared.base.flush(timeout)
    }

    pub fn client(&self) -> &Client<Reports> {
        self.shared.base.client()
    }
}

/// A record librdkafka refused, as the message a failed send hands back (as rdkafka's does).
fn unsent<K, P, D>(record: BaseRecord<'_, K, P, D>) -> OwnedMessage
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: IntoOpaque,
{
    OwnedMessage::new(
        record.payload.map(|p| p.to_bytes().to_vec()),
        record.key.map(|k| k.to_bytes().to_vec()),
        record.topic.to_string(),
        record
            .timestamp
            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        record.partition.unwrap_or(-1),
        0,
        record.headers,
    )
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The thread: sleep until librdkafka's queue has something (or `idle_wait` passes), then
/// serve what is there, one event per `poll(0)`, which never waits. A panic while serving one
/// (a bug) is counted and logged, and the thread serves on: otherwise every later send of the
/// producer would wait for its caller's bound.
fn serve(
    base: &BaseProducer<Reports>,
    stop: &AtomicBool,
    idle_wait: Duration,
    serving: SyncSender<()>,
) {
    let rk = base.client().native_ptr();
    // SAFETY: `rk` is alive as long as `base`, which outlives this function. The queue handle
    // taken here is given back below, before `base` can be dropped. The callback's opaque is a
    // boxed `Thread` that is freed only after the callback is turned off, and librdkafka calls
    // the callback and turns it off under the queue's lock, so no call can be under way then.
    let queue = unsafe { rd::rd_kafka_queue_get_main(rk) };
    let me: *mut Thread = Box::into_raw(Box::new(std::thread::current()));
    unsafe { rd::rd_kafka_queue_cb_event_enable(queue, Some(wake), me.cast::<c_void>()) };
    let _ = serving.send(());
    metrics::counter!("otp_kafka_delivery_panics_total").increment(0);
    loop {
        let mut served = 0;
        while served < MAX_RUN && unsafe { rd::rd_kafka_queue_length(queue) } > 0 {
            if std::panic::catch_unwind(AssertUnwindSafe(|| base.poll(Duration::ZERO))).is_err() {
                metrics::counter!("otp_kafka_delivery_panics_total").increment(1);
                tracing::error!("serving a Kafka delivery report panicked; serving on");
            }
            served += 1;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if served < MAX_RUN {
            // An event queued after the length was read unparks us, so this returns at once.
            std::thread::park_timeout(idle_wait);
        }
    }
    unsafe {
        rd::rd_kafka_queue_cb_event_enable(queue, None, std::ptr::null_mut());
        rd::rd_kafka_queue_destroy(queue);
        drop(Box::from_raw(me));
    }
}

/// librdkafka's "no longer empty" callback, on the enqueuing thread: wake the serving thread.
unsafe extern "C" fn wake(_: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the boxed `Thread` of `serve`, alive while the callback is on.
    let thread = unsafe { &*opaque.cast::<Thread>() };
    thread.unpark();
}

/// Hands each delivery report to the future of its send.
pub struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let report = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The send's future may be gone (its caller timed out); then nobody is waiting.
        let _ = tx.send(report);
    }
}
