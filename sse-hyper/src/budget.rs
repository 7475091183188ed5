//! [`BodyBudget`]: the publish bodies being read at one time share one budget of bytes, so that
//! connections that each send part of a body and stop hold at most the budget, whatever their
//! number and whether or not publishing needs a token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a body waits for room in the budget before it is refused.
const WAIT: Duration = Duration::from_secs(1);

/// Bytes of publish bodies the process may hold while reading them.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
}

/// The part of the budget one body holds, given back when it is dropped.
#[derive(Debug, Default)]
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Adds `bytes` to what `held` holds, waiting a moment for others to give some back; `false`
    /// when the budget stays spent.
    pub(crate) async fn take(&self, held: &mut Held, bytes: usize) -> bool {
        let Ok(bytes) = u32::try_from(bytes) else {
            return false;
        };
        let acquired = tokio::time::timeout(WAIT, self.bytes.clone().acquire_many_owned(bytes));
        match acquired.await {
            Ok(Ok(permit)) => {
                match &mut held.0 {
                    Some(held) => held.merge(permit),
                    None => held.0 = Some(permit),
                }
                true
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Bytes free right now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_refuses_after_a_wait_and_comes_back_when_bodies_end() {
        let budget = BodyBudget::new(100);
        let mut first = Held::default();
        assert!(budget.take(&mut first, 60).await);
        assert!(budget.take(&mut first, 30).await);
        assert_eq!(budget.free(), 10);
        let mut second = Held::default();
        assert!(!budget.take(&mut second, 20).await, "over the budget");
        drop(first);
        assert_eq!(budget.free(), 100);
        assert!(budget.take(&mut second, 20).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_for_room_given_back_meanwhile() {
        let budget = BodyBudget::new(100);
        let mut first = Held::default();
        assert!(budget.take(&mut first, 100).await);
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut second = Held::default();
                budget.take(&mut second, 50).await
            })
        };
        tokio::time::sleep(WAIT / 2).await;
        drop(first);
        assert!(waiting.await.expect("the waiting body"));
    }
}
