//! Host huge pages: hugetlbfs mounts, pools per page size, transparent huge pages and populate.
#![deny(missing_docs)]
