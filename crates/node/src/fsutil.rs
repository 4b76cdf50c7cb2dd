//! Small file-system helpers shared by the writers (the CLI's materialize, the Longhorn store).

use std::fs::File;
use std::path::Path;

/// A rename (or a new file) is durable only once its directory is synced. Failure to sync is
/// not fatal: the data itself was synced before the rename.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
