//! Walks over uWSGI's singly linked lists (`next` pointers), next to the
//! bindings they follow.

use super::sys;

/// A node of one of uWSGI's linked lists.
pub trait Linked {
    fn next_node(&self) -> *mut Self;
}

macro_rules! linked {
    ($($t:ty),*) => {$(
        impl Linked for $t {
            fn next_node(&self) -> *mut Self {
                self.next
            }
        }
    )*};
}

linked!(
    sys::uwsgi_string_list,
    sys::uwsgi_regexp_list,
    sys::uwsgi_gateway_socket,
    sys::uwsgi_socket
);

/// Every node from `head` on.
///
/// # Safety
/// `head` must be null or the head of a list of valid nodes that nobody
/// changes while the iterator is used.
pub unsafe fn nodes<'a, T: Linked + 'a>(head: *mut T) -> impl Iterator<Item = &'a T> {
    let mut at = head;
    std::iter::from_fn(move || {
        // SAFETY: per the contract, `at` is null or a valid node.
        let node = unsafe { at.as_ref()? };
        at = node.next_node();
        Some(node)
    })
}
