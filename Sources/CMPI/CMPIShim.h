// CMPIShim: Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, MPI_IN_PLACE, ...)
// are C macros that expand to addresses of library globals; Swift cannot import such
// macros, so each gets a static inline getter here.
#include <mpi.h>

static inline MPI_Comm kat_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm kat_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype kat_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype kat_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype kat_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype kat_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype kat_mpi_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Op kat_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op kat_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op kat_mpi_min(void) { return MPI_MIN; }
static inline void *kat_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *kat_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request kat_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline int kat_mpi_any_source(void) { return MPI_ANY_SOURCE; }
static inline int kat_mpi_any_tag(void) { return MPI_ANY_TAG; }
static inline int kat_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int kat_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int kat_mpi_success(void) { return MPI_SUCCESS; }
static inline int kat_mpi_status_source(const MPI_Status *s) { return s->MPI_SOURCE; }
static inline int kat_mpi_status_tag(const MPI_Status *s) { return s->MPI_TAG; }
static inline MPI_Errhandler kat_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Info kat_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline int kat_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline MPI_Win kat_mpi_win_null(void) { return MPI_WIN_NULL; }
static inline MPI_Datatype kat_mpi_int(void) { return MPI_INT; }
