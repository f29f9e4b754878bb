//! Model 6: first use of an `AllocatorSlot` from two threads.
#![cfg(loom)]

use graphalloc::{Allocator, AllocatorSlot, Config, Error};
use loom::sync::Arc;
use loom::thread;
use loom_tests::explore;

/// A capacity no default configuration has, to tell the installed
/// allocator from the default one.
const INSTALL_CAPACITY: usize = 3 << 20;

fn addr(a: &Allocator) -> usize {
    a as *const Allocator as usize
}

fn capacity(a: &Allocator) -> usize {
    a.backend(0).unwrap().mem_info().unwrap().total
}

/// Model 6: `get()` (which installs the default on first use) races
/// `install(config)`. Exactly one allocator wins: either install fails with
/// `AlreadyInstalled` and get returned the default allocator, or install
/// succeeded and get returned that same allocator.
#[test]
fn first_use_get_races_install() {
    let tally = explore("6 AllocatorSlot get races install", None, |tally| {
        let slot = Arc::new(AllocatorSlot::new());
        let getter = {
            let slot = slot.clone();
            thread::spawn(move || addr(slot.get().expect("default allocator builds")))
        };
        let installed = slot.install(Config::host(INSTALL_CAPACITY)).map(addr);
        let got = getter.join().unwrap();

        let winner = slot.installed().expect("the slot is set");
        assert_eq!(got, addr(winner), "get returned the slot's allocator");
        match installed {
            Ok(a) => {
                assert_eq!(a, addr(winner), "install returned the slot's allocator");
                assert_eq!(capacity(winner), INSTALL_CAPACITY);
                tally.note("install won");
            }
            Err(Error::AlreadyInstalled) => {
                assert_ne!(
                    capacity(winner),
                    INSTALL_CAPACITY,
                    "get's default allocator won"
                );
                tally.note("get won");
            }
            Err(e) => panic!("unexpected install error: {e}"),
        }
        // Later calls agree.
        assert_eq!(addr(slot.get().unwrap()), addr(winner));
        assert_eq!(
            slot.install(Config::host(INSTALL_CAPACITY)).unwrap_err(),
            Error::AlreadyInstalled
        );
    });
    tally.expect(&["install won", "get won"]);
}
