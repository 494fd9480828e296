//! Coalescing of wake-ups after enqueue: at most one push per device per window, and no lost
//! wake-up.
//!
//! The rule: the first wake-up of a device opens a window and is pushed at once. Wake-ups that
//! arrive while the window is open are only remembered. When the window closes, if any arrived
//! *and* the device still has a command that was never fetched (`queued`), one more push is sent
//! and a new window opens; otherwise the device is forgotten. A device that fetched everything
//! after the first push is therefore not pushed again, and a command queued just after the device
//! finished its session still gets its push, at most one window late.
//!
//! This file only keeps the per-device state; the push and the queue check are the caller's.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

use mdm_core::DeviceId;

#[derive(Debug, Default)]
pub(super) struct Coalescer {
    /// Devices with an open window, and whether another wake-up arrived during it.
    open: Mutex<HashMap<DeviceId, bool>>,
}

impl Coalescer {
    /// True when no window is open for `device`: the caller pushes now and owns the window.
    /// False: the wake-up is remembered for the window's end.
    pub(super) fn begin(&self, device: &DeviceId) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.entry(device.clone()) {
            Entry::Occupied(mut e) => {
                *e.get_mut() = true;
                false
            }
            Entry::Vacant(e) => {
                e.insert(false);
                true
            }
        }
    }

    /// At the end of a window: true (and the flag is reset, the window stays open) when wake-ups
    /// arrived during it; false, and the window is closed, when none did. Because the check and
    /// the close happen under one lock, a wake-up is either seen here or opens a new window.
    pub(super) fn take_pending(&self, device: &DeviceId) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get_mut(device) {
            Some(pending) if *pending => {
                *pending = false;
                true
            }
            _ => {
                open.remove(device);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdm_core::Platform;

    #[test]
    fn one_window_per_device_and_no_lost_wakeup() {
        let c = Coalescer::default();
        let a = DeviceId::new(Platform::Apple, &["A"]).expect("id");
        let b = DeviceId::new(Platform::Apple, &["B"]).expect("id");
        assert!(c.begin(&a));
        assert!(c.begin(&b), "windows are per device");
        assert!(!c.begin(&a));
        assert!(!c.begin(&a));
        assert!(c.take_pending(&a), "wake-ups arrived during the window");
        assert!(!c.take_pending(&a), "none since: the window closes");
        assert!(c.begin(&a), "a closed window opens again");
        assert!(!c.take_pending(&b));
    }
}
