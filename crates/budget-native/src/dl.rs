//! The dynamic loader: which shared objects are loaded ([`loaded_objects`]), a cheap
//! generation counter that changes when that list changes ([`generation`]), and
//! handles to a loaded object through which its symbols are resolved ([`Handle`]).
//!
//! On Linux this is `dl_iterate_phdr`, `dlopen(RTLD_NOLOAD)` and `dlsym` on that handle,
//! as threadpoolctl does; on macOS the loaded images come from dyld
//! (`_dyld_image_count`, `_dyld_get_image_name`; compile-checked only, no macOS here)
//! and the handles are the same POSIX calls. On Windows the loaded modules
//! (`K32EnumProcessModules`, `GetModuleFileNameW`), a reference taken with
//! `GetModuleHandleExW` and symbols from `GetProcAddress` (compile-checked only).
//! Elsewhere nothing is ever found, so every control is a no-op.

use std::ffi::c_void;
use std::path::PathBuf;

/// A reference to a shared object that was already loaded, taken with
/// `dlopen(path, RTLD_NOW | RTLD_NOLOAD)`.
///
/// The handle is never closed: its reference keeps the object mapped for the rest of
/// the process, so every function pointer resolved through it stays valid forever.
#[derive(Debug)]
pub(crate) struct Handle {
    #[cfg_attr(
        not(any(target_os = "linux", target_vendor = "apple")),
        allow(dead_code)
    )]
    raw: *mut c_void,
}

// SAFETY: a dlopen handle is an opaque token that the loader lets any thread use
// (dlsym is thread-safe); we never close it, so it cannot dangle.
unsafe impl Send for Handle {}
// SAFETY: as above; `&Handle` only allows `dlsym`, which is thread-safe.
unsafe impl Sync for Handle {}

#[cfg(any(target_os = "linux", target_vendor = "apple"))]
mod imp {
    use super::Handle;
    #[cfg(target_os = "linux")]
    use std::ffi::c_int;
    use std::ffi::{c_void, CStr, CString};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    // dyld's image list (libSystem; `libc` marks its own declarations deprecated in
    // favour of the `mach2` crate, a dependency for two functions).
    #[cfg(target_vendor = "apple")]
    extern "C" {
        fn _dyld_image_count() -> u32;
        fn _dyld_get_image_name(image_index: u32) -> *const std::ffi::c_char;
    }

    /// The number of images dyld has loaded, as the generation: a `dlclose` followed
    /// by a `dlopen` of another image between two looks goes unseen (rare; the next
    /// change of count rescans).
    #[cfg(target_vendor = "apple")]
    pub(crate) fn generation() -> (u64, u64) {
        // SAFETY: no preconditions.
        (u64::from(unsafe { _dyld_image_count() }), 0)
    }

    /// Every image dyld has loaded but the main program (image 0).
    #[cfg(target_vendor = "apple")]
    pub(crate) fn loaded_objects() -> Vec<PathBuf> {
        // SAFETY: no preconditions.
        let count = unsafe { _dyld_image_count() };
        (1..count)
            .filter_map(|i| {
                // SAFETY: `i` is below the count; the name is null (an image unloaded
                // meanwhile) or a NUL-terminated string owned by dyld, copied at once.
                let name = unsafe { _dyld_get_image_name(i) };
                (!name.is_null()).then(|| {
                    // SAFETY: as above.
                    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
                    PathBuf::from(std::ffi::OsString::from_vec(bytes))
                })
            })
            .collect()
    }

    /// `(dlpi_adds, dlpi_subs)`: how many objects were ever loaded and unloaded.
    #[cfg(target_os = "linux")]
    pub(crate) fn generation() -> (u64, u64) {
        unsafe extern "C" fn first(
            info: *mut libc::dl_phdr_info,
            size: libc::size_t,
            data: *mut c_void,
        ) -> c_int {
            let end = std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs)
                + std::mem::size_of::<libc::c_ulonglong>();
            if size >= end {
                // SAFETY: the loader passes a valid `dl_phdr_info` of `size` bytes
                // (checked to cover both counters) for the duration of this call, and
                // `data` is the `&mut (u64, u64)` passed to `dl_iterate_phdr` below.
                unsafe {
                    let out = &mut *(data as *mut (u64, u64));
                    *out = ((*info).dlpi_adds, (*info).dlpi_subs);
                }
            }
            1 // stop after the first object: the counters are the same for all
        }
        let mut out = (0u64, 0u64);
        // SAFETY: `first` matches the callback signature and only writes through
        // `data`, which points to `out`, alive until `dl_iterate_phdr` returns.
        unsafe { libc::dl_iterate_phdr(Some(first), &mut out as *mut (u64, u64) as *mut c_void) };
        out
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn loaded_objects() -> Vec<PathBuf> {
        unsafe extern "C" fn push(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: `info` is valid for this call; `dlpi_name` is null or a
            // NUL-terminated string owned by the loader, copied out before returning;
            // `data` is the `&mut Vec<PathBuf>` passed below.
            unsafe {
                let name = (*info).dlpi_name;
                if !name.is_null() {
                    let bytes = CStr::from_ptr(name).to_bytes();
                    if !bytes.is_empty() {
                        let out = &mut *(data as *mut Vec<PathBuf>);
                        out.push(PathBuf::from(std::ffi::OsString::from_vec(bytes.to_vec())));
                    }
                }
            }
            0
        }
        let mut out: Vec<PathBuf> = Vec::new();
        // SAFETY: `push` matches the callback signature; `data` points to `out`, which
        // outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(push), &mut out as *mut Vec<PathBuf> as *mut c_void) };
        out
    }

    impl Handle {
        /// A handle to `path` if (and only if) it is loaded already.
        pub(crate) fn open_loaded(path: &Path) -> Option<Handle> {
            let c = CString::new(path.as_os_str().as_bytes()).ok()?;
            // SAFETY: `c` is a valid C string; RTLD_NOLOAD never loads anything new, so
            // no initialiser runs: it only takes a reference on an object in memory.
            let raw = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            (!raw.is_null()).then_some(Handle { raw })
        }

        /// The address of `name` as resolved from this object (its own definition or
        /// one of its dependencies'), or `None`.
        pub(crate) fn symbol(&self, name: &str) -> Option<*mut c_void> {
            let c = CString::new(name).ok()?;
            // SAFETY: `raw` is a live handle (never closed), `c` a valid C string.
            let p = unsafe { libc::dlsym(self.raw, c.as_ptr()) };
            (!p.is_null()).then_some(p)
        }

        /// Like [`Handle::symbol`], but only if the definition is in this very object
        /// (not in a dependency, e.g. `omp_set_num_threads` of libgomp found through
        /// an OpenBLAS that links it).
        pub(crate) fn own_symbol(&self, name: &str, path: &Path) -> Option<*mut c_void> {
            let p = self.symbol(name)?;
            // SAFETY: an all-zero `Dl_info` is a valid value of this plain C struct.
            let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
            // SAFETY: `p` is an address inside a loaded object; `info` is writable.
            let ok = unsafe { libc::dladdr(p as *const c_void, &mut info) };
            if ok == 0 || info.dli_fname.is_null() {
                return None;
            }
            // SAFETY: `dli_fname` is a NUL-terminated string owned by the loader.
            let file = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
            same_file(Path::new(std::ffi::OsStr::from_bytes(file)), path).then_some(p)
        }
    }

    fn same_file(a: &Path, b: &Path) -> bool {
        a == b
            || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
    }
}

#[cfg(windows)]
mod imp {
    use super::Handle;
    use std::ffi::{c_void, CString, OsString};
    use std::os::windows::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use windows_sys::Win32::Foundation::HMODULE;
    use windows_sys::Win32::System::LibraryLoader::{
        GetModuleFileNameW, GetModuleHandleExW, GetProcAddress,
        GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS, GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
    };
    use windows_sys::Win32::System::ProcessStatus::K32EnumProcessModules;
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    /// The modules of this process, the program first.
    fn modules() -> Vec<HMODULE> {
        // SAFETY: a pseudo-handle for this process; no preconditions.
        let process = unsafe { GetCurrentProcess() };
        let mut mods: Vec<HMODULE> = vec![std::ptr::null_mut(); 256];
        loop {
            let mut needed = 0u32;
            let bytes = std::mem::size_of_val(mods.as_slice()) as u32;
            // SAFETY: `mods` is writable for `bytes` bytes; `needed` is writable.
            let ok =
                unsafe { K32EnumProcessModules(process, mods.as_mut_ptr(), bytes, &mut needed) };
            if ok == 0 {
                return Vec::new();
            }
            let n = needed as usize / std::mem::size_of::<HMODULE>();
            if n <= mods.len() {
                mods.truncate(n);
                return mods;
            }
            mods.resize(n, std::ptr::null_mut());
        }
    }

    /// The module count, as the generation: an unload followed by a load between two
    /// looks goes unseen (rare; the next change of count rescans).
    pub(crate) fn generation() -> (u64, u64) {
        (modules().len() as u64, 0)
    }

    fn file_name(module: HMODULE) -> Option<PathBuf> {
        let mut buf = vec![0u16; 2048];
        // SAFETY: `module` came from K32EnumProcessModules; `buf` is writable for the
        // length passed.
        let n = unsafe { GetModuleFileNameW(module, buf.as_mut_ptr(), buf.len() as u32) };
        (n > 0).then(|| PathBuf::from(OsString::from_wide(&buf[..n as usize])))
    }

    /// Every loaded module but the program.
    pub(crate) fn loaded_objects() -> Vec<PathBuf> {
        modules()
            .into_iter()
            .skip(1)
            .filter_map(file_name)
            .collect()
    }

    impl Handle {
        /// A handle to `path` if (and only if) it is loaded already; the reference it
        /// takes is never released, so the module stays mapped.
        pub(crate) fn open_loaded(path: &Path) -> Option<Handle> {
            let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
            let mut module: HMODULE = std::ptr::null_mut();
            // SAFETY: a NUL-terminated wide string and a writable HMODULE; flags 0
            // takes a reference on a module already loaded and loads nothing.
            let ok = unsafe { GetModuleHandleExW(0, wide.as_ptr(), &mut module) };
            (ok != 0 && !module.is_null()).then_some(Handle { raw: module })
        }

        /// The address of the export `name` of this module, or `None`.
        pub(crate) fn symbol(&self, name: &str) -> Option<*mut c_void> {
            let c = CString::new(name).ok()?;
            // SAFETY: a module handle we hold a reference on and a NUL-terminated name.
            let f = unsafe { GetProcAddress(self.raw, c.as_ptr().cast()) }?;
            Some(f as *mut c_void)
        }

        /// Like [`Handle::symbol`], but only if the code is in this very module (an
        /// export forwarded to another DLL does not count).
        pub(crate) fn own_symbol(&self, name: &str, _path: &Path) -> Option<*mut c_void> {
            let p = self.symbol(name)?;
            let mut owner: HMODULE = std::ptr::null_mut();
            // SAFETY: `p` is an address inside a loaded module; with FROM_ADDRESS the
            // "name" argument is that address; UNCHANGED_REFCOUNT takes no reference.
            let ok = unsafe {
                GetModuleHandleExW(
                    GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS
                        | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                    p as *const u16,
                    &mut owner,
                )
            };
            (ok != 0 && owner == self.raw).then_some(p)
        }
    }
}

#[cfg(not(any(target_os = "linux", target_vendor = "apple", windows)))]
mod imp {
    use super::Handle;
    use std::ffi::c_void;
    use std::path::{Path, PathBuf};

    pub(crate) fn generation() -> (u64, u64) {
        (0, 0)
    }

    pub(crate) fn loaded_objects() -> Vec<PathBuf> {
        Vec::new()
    }

    impl Handle {
        pub(crate) fn open_loaded(_path: &Path) -> Option<Handle> {
            None
        }
        pub(crate) fn symbol(&self, _name: &str) -> Option<*mut c_void> {
            None
        }
        pub(crate) fn own_symbol(&self, _name: &str, _path: &Path) -> Option<*mut c_void> {
            None
        }
    }
}

/// The loader's `(adds, subs)` counters; equal values mean the same set of objects.
pub(crate) fn generation() -> (u64, u64) {
    imp::generation()
}

/// The file names of every loaded shared object (the main program excluded).
pub(crate) fn loaded_objects() -> Vec<PathBuf> {
    imp::loaded_objects()
}
