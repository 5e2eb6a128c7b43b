/* Keeps kc_engine non-empty while its modules are written; removed once they land. */
#include "engine/dtype.h"
