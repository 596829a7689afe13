//! Congestion control of a peer link: quinn's BBR, with a window floor for sub-millisecond
//! paths.
//!
//! **Why BBR.** A punched path drops packets that say nothing about congestion (Wi-Fi,
//! a busy NAT, a lossy uplink). A loss-based controller (quinn's Cubic and NewReno) cuts its
//! window at each of them: in the NAT lab, with 2 % of packets lost at random, Cubic moved
//! about half of iroh's rate and a quarter of BBR's, which models the path by its delivery
//! rate and round trip instead (`BENCHMARKS.md`, link throughput).
//!
//! **Why a floor.** quinn's BBR (a port of BBR v1) holds its window at `gain × bandwidth ×
//! minimum RTT`. When that RTT is tens of microseconds (a LAN, loopback), the product is a
//! few packets, while ACKs come back batched by the receiver's scheduling and ACK delay, so
//! the window empties long before the next batch: in a bench on loopback the window sat at
//! the 4-packet minimum and a 16 MiB pipe took 3× as long as with Cubic. Linux's BBR covers
//! this with its "extra acked" term; [`Floored`] does the same more simply: the window
//! never falls below the bytes the path delivered in its best [`BUCKET`] (a millisecond)
//! of the last [`KEEP`]. BBR's own window is twice the bytes of a round trip, so on a path
//! whose round trip is a millisecond or more the floor is below it and changes nothing:
//! it only acts where the round trip is shorter than ACK batching, and holds at most a
//! millisecond of data in flight there.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Delivery is counted in buckets of this length.
const BUCKET: Duration = Duration::from_millis(1);

/// The floor follows the best bucket of this long a past.
const KEEP: Duration = Duration::from_millis(200);

/// Builds a [`Floored`] BBR for each connection.
#[derive(Debug, Default)]
pub(crate) struct FlooredBbr {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for FlooredBbr {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.bbr.clone().build(now, current_mtu),
            delivery: RecentDelivery::new(now),
        })
    }
}

/// A controller whose window is at least [`RecentDelivery::floor`].
pub(crate) struct Floored {
    inner: Box<dyn Controller>,
    delivery: RecentDelivery,
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.delivery.on_sent(now);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.delivery.on_ack(now, bytes);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            // The path as it was is gone: start over from what BBR knows.
            self.delivery = RecentDelivery::new(now);
        }
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.delivery.floor())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.inner.clone_box(),
            delivery: self.delivery.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Bytes acknowledged per [`BUCKET`] over the last [`KEEP`] (sans-IO: time comes in).
#[derive(Debug, Clone)]
struct RecentDelivery {
    /// Start of the bucket being filled, and its bytes.
    current: (Instant, u64),
    /// Finished buckets within [`KEEP`], oldest first: (start, bytes).
    past: VecDeque<(Instant, u64)>,
    /// The bytes of the best bucket in `past`, kept as buckets come and go (at most once a
    /// [`BUCKET`]), because quinn asks for the window for every packet it sends.
    past_best: u64,
    /// When the last ACK came.
    last_ack: Instant,
}

impl RecentDelivery {
    fn new(now: Instant) -> Self {
        RecentDelivery {
            current: (now, 0),
            past: VecDeque::new(),
            past_best: 0,
            last_ack: now,
        }
    }

    fn on_ack(&mut self, now: Instant, bytes: u64) {
        self.last_ack = now;
        let (start, filled) = self.current;
        if now.saturating_duration_since(start) >= BUCKET {
            if filled > 0 {
                self.past.push_back((start, filled));
            }
            self.current = (now, 0);
            while self
                .past
                .front()
                .is_some_and(|&(at, _)| now.saturating_duration_since(at) > KEEP)
            {
                self.past.pop_front();
            }
            self.past_best = self.past.iter().map(|&(_, bytes)| bytes).max().unwrap_or(0);
        }
        self.current.1 = self.current.1.saturating_add(bytes);
    }

    /// Sending after a quiet spell longer than [`KEEP`]: what the path delivered then says
    /// nothing about it now.
    fn on_sent(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_ack) > KEEP {
            *self = RecentDelivery::new(now);
        }
    }

    /// The smallest window: the bytes of the best bucket (0 before any ACK).
    fn floor(&self) -> u64 {
        self.past_best.max(self.current.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_floor_before_any_ack() {
        let d = RecentDelivery::new(Instant::now());
        assert_eq!(d.floor(), 0);
    }

    #[test]
    fn the_floor_is_the_best_bucket_of_the_recent_past() {
        let t0 = Instant::now();
        let mut d = RecentDelivery::new(t0);
        // 100 KB per ms (two ACKs each) for 20 ms, one busier millisecond, then 10 KB per ms.
        for i in 0..20 {
            d.on_ack(t0 + i * MS, 50_000);
            d.on_ack(t0 + i * MS + MS / 2, 50_000);
        }
        d.on_ack(t0 + 20 * MS, 300_000);
        for i in 21..100 {
            d.on_ack(t0 + i * MS, 10_000);
        }
        assert_eq!(d.floor(), 300_000);
        // Once the busy millisecond is older than KEEP, the best of the rest counts.
        for i in 100..300 {
            d.on_ack(t0 + i * MS, 10_000);
        }
        assert_eq!(d.floor(), 10_000);
    }

    #[test]
    fn a_quiet_spell_forgets_the_past() {
        let t0 = Instant::now();
        let mut d = RecentDelivery::new(t0);
        d.on_ack(t0, 100_000);
        d.on_sent(t0 + 10 * MS);
        assert_eq!(d.floor(), 100_000);
        d.on_sent(t0 + KEEP + 10 * MS);
        assert_eq!(d.floor(), 0);
    }

    /// A controller that only reports a fixed window.
    #[derive(Clone)]
    struct Fixed(u64);

    impl Controller for Fixed {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.0
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            self.0
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    #[test]
    fn the_window_is_the_larger_of_the_inner_one_and_the_floor() {
        let t0 = Instant::now();
        let mut floored = Floored {
            inner: Box::new(Fixed(5_808)),
            delivery: RecentDelivery::new(t0),
        };
        assert_eq!(floored.window(), 5_808);
        floored.delivery.on_ack(t0 + MS, 40_000);
        assert_eq!(floored.window(), 40_000);
        floored.on_congestion_event(t0 + 2 * MS, t0, true, 1_452);
        assert_eq!(floored.window(), 5_808);
        let big = Floored {
            inner: Box::new(Fixed(10_000_000)),
            delivery: floored.delivery.clone(),
        };
        assert_eq!(big.window(), 10_000_000);
    }

    #[test]
    fn the_factory_builds_bbr_with_its_initial_window() {
        let controller = Arc::new(FlooredBbr::default()).build(Instant::now(), 1200);
        assert_eq!(controller.window(), controller.initial_window());
        assert!(controller.window() > 0);
    }
}
