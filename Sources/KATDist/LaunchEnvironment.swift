import Foundation

/// What the launcher (mpirun, srun) tells a process through its environment. The only
/// place kat-dist reads Open MPI's or PMI's variables.
public enum LaunchEnvironment {
    static var env: [String: String] { ProcessInfo.processInfo.environment }

    /// Whether this process was started by an MPI launcher.
    public static var launchedByMPI: Bool {
        env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil || env["PMI_RANK"] != nil
    }

    /// This process's rank in the job, before MPI is initialised (0 outside a job).
    public static var worldRank: Int {
        (env["OMPI_COMM_WORLD_RANK"] ?? env["PMIX_RANK"] ?? env["PMI_RANK"]).flatMap(Int.init) ?? 0
    }

    /// The number of ranks in the job, before MPI is initialised (1 outside a job).
    public static var worldSize: Int {
        (env["OMPI_COMM_WORLD_SIZE"] ?? env["PMI_SIZE"]).flatMap(Int.init) ?? 1
    }
}
