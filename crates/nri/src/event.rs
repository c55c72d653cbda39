//! NRI events and the subscription mask (`1 << (event - 1)`).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

pub use drakit_proto::nri::Event;

/// The set of events a plugin subscribes to, as sent in `ConfigureResponse.events`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventMask(u32);

const ALL_EVENTS: [Event; 14] = [
    Event::RunPodSandbox,
    Event::StopPodSandbox,
    Event::RemovePodSandbox,
    Event::CreateContainer,
    Event::PostCreateContainer,
    Event::StartContainer,
    Event::PostStartContainer,
    Event::UpdateContainer,
    Event::PostUpdateContainer,
    Event::StopContainer,
    Event::RemoveContainer,
    Event::UpdatePodSandbox,
    Event::PostUpdatePodSandbox,
    Event::ValidateContainerAdjustment,
];

impl EventMask {
    /// No events. Note: a zero mask in `ConfigureResponse` means "all events" to a runtime.
    pub const EMPTY: EventMask = EventMask(0);
    /// Every event an NRI v0.10+ runtime knows (`0x3FFF`).
    pub const ALL: EventMask = EventMask(0x3FFF);
    /// Every event an NRI <= v0.9 runtime knows (`0x07FF`).
    pub const ALL_LEGACY: EventMask = EventMask(0x07FF);

    /// The mask with only `event`; `EMPTY` for `Unknown` and `Last`.
    pub const fn of(event: Event) -> EventMask {
        let v = event as i32;
        if v <= 0 || v >= Event::Last as i32 {
            EventMask(0)
        } else {
            EventMask(1 << (v - 1))
        }
    }

    /// Build from a list of events.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> EventMask {
        events
            .into_iter()
            .fold(EventMask::EMPTY, |m, e| m | EventMask::of(e))
    }

    /// Raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// From raw bits (unknown bits are kept).
    pub const fn from_bits(bits: u32) -> EventMask {
        EventMask(bits)
    }

    /// The value for `ConfigureResponse.events`.
    pub fn to_proto(self) -> i32 {
        i32::try_from(self.0).unwrap_or(i32::MAX)
    }

    /// Whether `event` is in the set.
    pub const fn contains(self, event: Event) -> bool {
        let m = EventMask::of(event).0;
        m != 0 && self.0 & m == m
    }

    /// Whether no event is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Keep only the bits in `other`.
    pub const fn intersect(self, other: EventMask) -> EventMask {
        EventMask(self.0 & other.0)
    }

    /// Add one event.
    pub fn with(self, event: Event) -> EventMask {
        self | EventMask::of(event)
    }

    /// The events in the set, in enum order.
    pub fn events(self) -> impl Iterator<Item = Event> {
        ALL_EVENTS.into_iter().filter(move |e| self.contains(*e))
    }

    /// Parse a comma-separated list like `"RunPodSandbox,create_container,all"`: names are
    /// matched case-insensitively ignoring `_` and `-`; `all` adds every event.
    pub fn parse(s: &str) -> Result<EventMask, String> {
        let norm = |x: &str| {
            x.chars()
                .filter(|c| *c != '_' && *c != '-')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        };
        let mut mask = EventMask::EMPTY;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let want = norm(part);
            if want == "all" {
                mask |= EventMask::ALL;
                continue;
            }
            let event = ALL_EVENTS
                .into_iter()
                .find(|e| norm(e.as_str_name()) == want)
                .ok_or_else(|| format!("unknown NRI event {part:?}"))?;
            mask |= EventMask::of(event);
        }
        Ok(mask)
    }

    /// The events a runtime speaking NRI `version` (e.g. `v0.9.1`, `v0.12.0`) accepts:
    /// `ALL_LEGACY` below v0.10.0, `ALL` otherwise or when the version is unknown.
    pub fn valid_for_runtime(version: &str) -> EventMask {
        let v = version.trim_start_matches('v');
        let mut it = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
        match (it.next().flatten(), it.next().flatten()) {
            (Some(0), Some(minor)) if minor < 10 => EventMask::ALL_LEGACY,
            _ => EventMask::ALL,
        }
    }
}

/// The events a runtime accepts, from its Configure message: `NRI_version` when present, else
/// inferred from runtime name and version (containerd < 2.2 and CRI-O < 1.34 speak NRI < v0.10).
pub fn valid_for_runtime_info(
    runtime_name: &str,
    runtime_version: &str,
    nri_version: &str,
) -> EventMask {
    if !nri_version.is_empty() && nri_version != "unknown" {
        return EventMask::valid_for_runtime(nri_version);
    }
    let v = runtime_version.trim_start_matches('v');
    let mut it = v.split(['.', '-', '+', '~']).map(|p| p.parse::<u32>().ok());
    let (major, minor) = (it.next().flatten(), it.next().flatten());
    let legacy = match (runtime_name, major, minor) {
        ("containerd", Some(ma), Some(mi)) => (ma, mi) < (2, 2),
        ("cri-o" | "crio" | "CRI-O", Some(ma), Some(mi)) => (ma, mi) < (1, 34),
        _ => false,
    };
    if legacy {
        EventMask::ALL_LEGACY
    } else {
        EventMask::ALL
    }
}

impl BitOr for EventMask {
    type Output = EventMask;
    fn bitor(self, rhs: EventMask) -> EventMask {
        EventMask(self.0 | rhs.0)
    }
}

impl BitOr<Event> for EventMask {
    type Output = EventMask;
    fn bitor(self, rhs: Event) -> EventMask {
        self | EventMask::of(rhs)
    }
}

impl BitOrAssign for EventMask {
    fn bitor_assign(&mut self, rhs: EventMask) {
        self.0 |= rhs.0;
    }
}

impl From<Event> for EventMask {
    fn from(e: Event) -> Self {
        EventMask::of(e)
    }
}

impl fmt::Debug for EventMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventMask({:#06x}: ", self.0)?;
        let names: Vec<&str> = self.events().map(|e| e.as_str_name()).collect();
        write!(f, "{})", names.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_the_enum_minus_one() {
        assert_eq!(EventMask::of(Event::RunPodSandbox).bits(), 1);
        assert_eq!(EventMask::of(Event::CreateContainer).bits(), 0x8);
        assert_eq!(
            EventMask::of(Event::ValidateContainerAdjustment).bits(),
            0x2000
        );
        assert_eq!(EventMask::of(Event::Unknown).bits(), 0);
        assert_eq!(EventMask::of(Event::Last).bits(), 0);
        let m = EventMask::from_events([Event::CreateContainer, Event::RemoveContainer]);
        assert_eq!(m.to_proto(), 0x408);
        let recorded = EventMask::from_events([
            Event::RunPodSandbox,
            Event::CreateContainer,
            Event::StartContainer,
            Event::StopContainer,
            Event::RemoveContainer,
        ]);
        assert_eq!(recorded.bits(), 1577);
        assert_eq!(EventMask::from_events(ALL_EVENTS), EventMask::ALL);
    }

    #[test]
    fn parse_and_versions() {
        assert_eq!(
            EventMask::parse("RunPodSandbox, create_container,STOP-CONTAINER")
                .unwrap()
                .bits(),
            1 | 8 | 0x200
        );
        assert_eq!(EventMask::parse("all").unwrap(), EventMask::ALL);
        assert!(EventMask::parse("nope").is_err());
        assert_eq!(
            EventMask::valid_for_runtime("v0.8.0"),
            EventMask::ALL_LEGACY
        );
        assert_eq!(EventMask::valid_for_runtime("v0.10.0"), EventMask::ALL);
        assert_eq!(EventMask::valid_for_runtime(""), EventMask::ALL);
        assert_eq!(
            valid_for_runtime_info("containerd", "v2.1.4", ""),
            EventMask::ALL_LEGACY
        );
        assert_eq!(
            valid_for_runtime_info("containerd", "1.7.27", "unknown"),
            EventMask::ALL_LEGACY
        );
        assert_eq!(
            valid_for_runtime_info("containerd", "v2.2.0", ""),
            EventMask::ALL
        );
        assert_eq!(
            valid_for_runtime_info("cri-o", "1.33.2", ""),
            EventMask::ALL_LEGACY
        );
        assert_eq!(
            valid_for_runtime_info("cri-o", "1.34.0", ""),
            EventMask::ALL
        );
        assert_eq!(
            valid_for_runtime_info("containerd", "v2.1.4", "v0.12.0"),
            EventMask::ALL
        );
        assert_eq!(valid_for_runtime_info("other", "9", ""), EventMask::ALL);
    }
}
