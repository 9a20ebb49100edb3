import Foundation
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// An environment process started in a process group of its own, with pipes to its
/// standard input and output (its standard error is kat-dist's).
///
/// With a guardian (kat-dist's own executable, run as `kat-dist env-guardian`), the
/// command runs under a small supervisor that ends every process the command started,
/// even ones that left its process group, when the command exits, when kat-dist ends it,
/// and when kat-dist itself dies, however it dies (the kernel signals the guardian when
/// its parent dies). Without one, ending it ends the process group.
final class EnvironmentProcess {
    let pid: pid_t
    /// Our end of the child's standard input (write) and output (read).
    let input: Int32
    let output: Int32
    private var reaped = false

    /// Starts `command` under `/bin/sh -c`, through `guardian` when given.
    /// - Throws: `EnvironmentError.start` naming the command and the cause.
    init(command: String, guardian: [String]?) throws {
        var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
        guard kat_pipe_cloexec(&toChild) == 0, kat_pipe_cloexec(&fromChild) == 0 else {
            throw EnvironmentError.start(command: command, cause: String(cString: strerror(errno)))
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A new process group whose id is the child's pid: the whole group can be ended.
        posix_spawnattr_setpgroup(&attributes, 0)
        // The child starts with default signal handling (kat-dist catches SIGUSR1).
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGUSR1, SIGUSR2, SIGPIPE, SIGTERM, SIGINT] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv = (guardian.map { $0 + [String(getpid())] } ?? []) + ["/bin/sh", "-c", command]
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, argv[0], &actions, &attributes, &cArgs, Glibc.environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1]); close(fromChild[0])
            throw EnvironmentError.start(command: command, cause: String(cString: strerror(rc)))
        }
        pid = child
        input = toChild[1]
        output = fromChild[0]
    }

    /// Whether the process has exited (it is then reaped).
    var hasExited: Bool {
        guard !reaped else { return true }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { reaped = true }
        return reaped
    }

    /// Ends the process and every process of its group: a guardian first gets SIGTERM and
    /// a moment to end the descendants that left the group; then the group gets SIGKILL.
    func end() {
        guard !reaped else { return }
        close(input)
        close(output)
        kill(pid, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<50 {
            if waitpid(pid, &status, WNOHANG) == pid { reaped = true; break }
            usleep(2_000)
        }
        kill(-pid, SIGKILL)
        if !reaped { waitpid(pid, &status, 0); reaped = true }
    }

    deinit { end() }
}

/// The supervisor an environment command runs under (`kat-dist env-guardian PID sh -c CMD`).
///
/// It asks the kernel for SIGTERM when its parent (kat-dist, pid PID) dies and becomes
/// the reaper of its orphaned descendants, starts the command, and when the command
/// exits or it is told to stop, kills every descendant, including those that left the
/// process group, then the group. Written here rather than as a shell script because a
/// shell can neither ask for its parent's death signal nor adopt orphans.
public enum EnvironmentGuardian {
    nonisolated(unsafe) static var stop: sig_atomic_t = 0

    /// Runs the guardian; `arguments` are the parent's pid and the command's argv.
    public static func run(_ arguments: [String]) -> Never {
        guard arguments.count >= 2, let parent = pid_t(arguments[0]) else {
            FileHandle.standardError.write(Data("kat-dist env-guardian: expected PARENT-PID COMMAND...\n".utf8))
            exit(2)
        }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in EnvironmentGuardian.stop = 1 }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0 // no SA_RESTART: waitpid returns on the signal
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaction(s, &action, nil) }
        _ = kat_set_child_subreaper()
        _ = kat_set_parent_death_signal(SIGTERM)
        if getppid() != parent { endDescendants(); exit(1) }
        let argv = Array(arguments.dropFirst())
        var cArgs = argv.map { strdup($0) } + [nil]
        var child: pid_t = 0
        guard posix_spawn(&child, argv[0], nil, nil, &cArgs, Glibc.environ) == 0 else { exit(127) }
        var status: Int32 = 0
        while stop == 0 {
            let r = waitpid(-1, &status, 0)
            if r == child { break }
            if r < 0 && errno == ECHILD { break }
        }
        endDescendants()
        exit(0)
    }

    /// Kills every descendant (re-parented orphans included) until none is left, then the
    /// process group.
    static func endDescendants() {
        let me = getpid()
        for _ in 0..<100 {
            let kids = children(of: me)
            if kids.isEmpty { break }
            for k in kids { kill(k, SIGKILL) }
            var status: Int32 = 0
            usleep(1_000)
            while waitpid(-1, &status, WNOHANG) > 0 {}
        }
        signal(SIGTERM, SIG_IGN)
        kill(0, SIGKILL)
    }

    /// Processes whose parent is `pid`, read from /proc.
    static func children(of pid: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { name -> pid_t? in
            guard let p = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            // After "pid (comm) ": state, then the parent's pid.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == pid ? p : nil
        }
    }
}
