//! A bounded cache of decoded tar pages (32 KiB each), least recently used out first.
//! Re-reads and nearby reads then cost a memcpy instead of an inflate.

use std::num::NonZeroUsize;

use lru::LruCache;

use super::cursor::PAGE;

pub struct PageCache {
    pages: Option<LruCache<u64, Box<[u8]>>>,
}

impl PageCache {
    /// A cache of at most `bytes` of decoded data; below one page it is off.
    pub fn new(bytes: u64) -> Self {
        let count = usize::try_from(bytes / PAGE as u64).unwrap_or(usize::MAX);
        Self {
            pages: NonZeroUsize::new(count).map(LruCache::new),
        }
    }

    pub fn get(&mut self, page: u64) -> Option<&[u8]> {
        self.pages.as_mut()?.get(&page).map(|b| &b[..])
    }

    /// Store a copy of a page, reusing the buffer of the page it evicts.
    pub fn insert(&mut self, page: u64, bytes: &[u8]) {
        let Some(pages) = self.pages.as_mut() else {
            return;
        };
        if let Some(existing) = pages.get_mut(&page) {
            if existing.len() == bytes.len() {
                existing.copy_from_slice(bytes);
                return;
            }
        }
        let buffer = match pages.len() == pages.cap().get() {
            true => pages
                .pop_lru()
                .map(|(_, b)| b)
                .filter(|b| b.len() == bytes.len()),
            false => None,
        };
        let buffer = match buffer {
            Some(mut b) => {
                b.copy_from_slice(bytes);
                b
            }
            None => bytes.to_vec().into_boxed_slice(),
        };
        pages.put(page, buffer);
    }

    pub fn clear(&mut self) {
        if let Some(pages) = self.pages.as_mut() {
            pages.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = PageCache::new(2 * PAGE as u64);
        cache.insert(1, &[1u8; PAGE]);
        cache.insert(2, &[2u8; PAGE]);
        assert!(cache.get(1).is_some());
        cache.insert(3, &[3u8; PAGE]);
        assert!(cache.get(2).is_none());
        assert_eq!(cache.get(1).map(|p| p[0]), Some(1));
        assert_eq!(cache.get(3).map(|p| p[0]), Some(3));
        cache.insert(4, &[4u8; 10]);
        assert_eq!(cache.get(4).map(|p| p.len()), Some(10));
        let mut off = PageCache::new(100);
        off.insert(1, &[1u8; PAGE]);
        assert!(off.get(1).is_none());
    }
}
