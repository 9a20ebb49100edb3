import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A file that could not be read or written; names the file and the cause (from errno:
/// "No space left on device", "Read-only file system", "Permission denied", ...).
public enum FileFault: Error, CustomStringConvertible, Equatable {
    case create(path: String, cause: String)
    case write(path: String, cause: String)
    case rename(path: String, cause: String)
    case read(path: String, cause: String)

    public var path: String {
        switch self {
        case let .create(p, _), let .write(p, _), let .rename(p, _), let .read(p, _): return p
        }
    }

    public var description: String {
        switch self {
        case let .create(p, c): return "\(p): cannot create the file: \(c)"
        case let .write(p, c): return "\(p): write failed: \(c)"
        case let .rename(p, c): return "\(p): cannot move the file into place: \(c)"
        case let .read(p, c): return "\(p): cannot read: \(c)"
        }
    }

    /// The text of the current errno.
    public static var currentCause: String { String(cString: strerror(errno)) }
}

/// Writes that never leave a partial file behind.
///
/// Written with POSIX calls rather than `FileHandle`, because the cause of a failure
/// (errno) is what a user needs to see, and `FileHandle` on Linux reports it only as an
/// untyped error.
public enum FileWriting {
    /// Writes `data` to `path` through a temporary file in the same directory, synced
    /// before the rename, so a reader sees the old file or the new one, never a part.
    /// - Throws: `FileFault` naming `path` and the cause; the temporary file is removed.
    public static func writeAtomically(_ data: Data, to path: String) throws(FileFault) {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .create(path: path, cause: FileFault.currentCause) }
        do {
            try writeAll(fd, data, path: path)
            guard fsync(fd) == 0 else { throw FileFault.write(path: path, cause: FileFault.currentCause) }
        } catch let fault as FileFault {
            close(fd)
            unlink(tmp)
            throw fault
        } catch {
            close(fd)
            unlink(tmp)
            throw .write(path: path, cause: "\(error)")
        }
        guard close(fd) == 0 else {
            let cause = FileFault.currentCause
            unlink(tmp)
            throw .write(path: path, cause: cause)
        }
        guard rename(tmp, path) == 0 else {
            let cause = FileFault.currentCause
            unlink(tmp)
            throw .rename(path: path, cause: cause)
        }
    }

    /// Writes every byte of `data` to `fd`, retrying short writes and EINTR.
    static func writeAll(_ fd: Int32, _ data: Data, path: String) throws(FileFault) {
        var failure: FileFault?
        data.withUnsafeBytes { raw in
            guard var p = raw.baseAddress else { return }
            var left = raw.count
            while left > 0 {
                let n = write(fd, p, left)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = .write(path: path, cause: FileFault.currentCause)
                    return
                }
                if n == 0 { failure = .write(path: path, cause: "the device accepted no more bytes"); return }
                p += n
                left -= n
            }
        }
        if let failure { throw failure }
    }

    /// Syncs a directory so that renames inside it survive a crash.
    public static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}

/// A file of whole lines, appended one line at a time (metrics, logs).
///
/// A line is written with one `write` and flushed to the kernel; when it cannot be written
/// whole (disk full), the file is cut back to its previous length, so a reader never sees
/// half a line, and the fault is thrown.
public final class LineFile {
    public let path: String
    private var fd: Int32
    private var length: off_t

    /// Opens `path` for appending, creating it when missing.
    public init(appendingTo path: String) throws(FileFault) {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .create(path: path, cause: FileFault.currentCause) }
        length = lseek(fd, 0, SEEK_END)
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Appends `line` and a newline.
    public func append(_ line: String) throws(FileFault) {
        try append(bytes: Data((line + "\n").utf8))
    }

    /// Appends `data` whole (one record of a binary log), or cuts the file back and throws.
    public func append(bytes data: Data) throws(FileFault) {
        do {
            try FileWriting.writeAll(fd, data, path: path)
        } catch {
            _ = ftruncate(fd, length)
            throw error
        }
        length += off_t(data.count)
    }

    /// Flushes the appended lines to the device.
    public func sync() throws(FileFault) {
        guard fsync(fd) == 0 else { throw .write(path: path, cause: FileFault.currentCause) }
    }
}
