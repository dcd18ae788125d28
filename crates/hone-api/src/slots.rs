//! Places for long-lived work (an upload being validated, an open event stream),
//! counted in all and per project: [`Slots::take`] gives one, or says which cap is
//! reached, at once (no waiting); the place is given back when its [`Slot`] is dropped,
//! however the work ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The caps, and the places taken.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    max_per_project: usize,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    all: usize,
    /// Only projects holding a place: an entry goes when its count reaches zero.
    per_project: HashMap<String, usize>,
}

/// Which cap refused a place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// This process's, for everyone.
    Server,
    /// The project's own.
    Project,
}

/// A place, given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    project: String,
}

impl Slots {
    /// `max` places in all, at most `max_per_project` of them (at least one each) held
    /// by one project.
    pub fn new(max: usize, max_per_project: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            max_per_project: max_per_project.max(1),
            taken: Mutex::new(Taken::default()),
        })
    }

    /// A place for `project`, or the cap that is reached.
    pub fn take(self: &Arc<Self>, project: &str) -> Result<Slot, Full> {
        let mut taken = self.lock();
        if taken.all >= self.max {
            return Err(Full::Server);
        }
        let mine = taken.per_project.entry(project.to_owned()).or_default();
        if *mine >= self.max_per_project {
            return Err(Full::Project);
        }
        *mine += 1;
        taken.all += 1;
        Ok(Slot {
            slots: self.clone(),
            project: project.to_owned(),
        })
    }

    /// Places held now, in all.
    pub fn in_use(&self) -> usize {
        self.lock().all
    }

    /// The counts hold no invariant a panic could break mid-way: a poisoned lock is
    /// still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.lock();
        taken.all = taken.all.saturating_sub(1);
        if let Some(n) = taken.per_project.get_mut(&self.project) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.per_project.remove(&self.project);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_in_all_and_per_project_and_given_back_on_drop() {
        let slots = Slots::new(3, 2);
        let a1 = slots.take("a").expect("a's first");
        let a2 = slots.take("a").expect("a's second");
        assert_eq!(slots.take("a").err(), Some(Full::Project));
        let b1 = slots.take("b").expect("b's first");
        assert_eq!(slots.take("b").err(), Some(Full::Server));
        assert_eq!(slots.in_use(), 3);
        drop(a1);
        let b2 = slots.take("b").expect("a place given back");
        drop((a2, b1, b2));
        assert_eq!(slots.in_use(), 0);
        assert!(slots.lock().per_project.is_empty(), "no entry left behind");
        // Caps of zero still allow one.
        let tiny = Slots::new(0, 0);
        let _one = tiny.take("a").expect("one");
        assert_eq!(tiny.take("b").err(), Some(Full::Server));
    }
}
