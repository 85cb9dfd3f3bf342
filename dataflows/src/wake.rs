//! Operators woken from other threads: what a checkpoint request or a raised epoch target
//! uses instead of polling.

use std::sync::{Mutex, PoisonError};

use timely::dataflow::Scope;
use timely::scheduling::SyncActivator;

/// Operators, of any workers, to activate when something they wait for changes.
#[derive(Debug, Default)]
pub struct Wakers {
    operators: Mutex<Vec<SyncActivator>>,
}

impl Wakers {
    /// Wakes the operator at `address` (its `OperatorInfo::address`) on every [`Wakers::wake`].
    pub fn register<T: timely::progress::Timestamp>(
        &self,
        scope: &Scope<'_, T>,
        address: &[usize],
    ) {
        let op = scope.worker().sync_activator_for(address.to_vec());
        self.lock().push(op);
    }

    /// Activates every registered operator. One whose worker has stopped cannot be woken,
    /// which is fine.
    pub fn wake(&self) {
        for op in self.lock().iter() {
            let _ = op.activate();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SyncActivator>> {
        // Nothing panics while holding it; a poisoned list is still a list.
        self.operators
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
