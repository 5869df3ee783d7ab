/* scrape.h — GET /metrics from a gateway under test, parsed strictly (promtext.h).
 *
 * Test-only code: blocking, on 127.0.0.1, a 5 s receive timeout; allocates (prom_free frees
 * what it parsed). Single-threaded. */
#ifndef AVLGATE_TESTS_SUPPORT_SCRAPE_H
#define AVLGATE_TESTS_SUPPORT_SCRAPE_H

#include <stddef.h>
#include <stdint.h>

#include "tests/support/promtext.h"

#ifdef __cplusplus
extern "C" {
#endif

/* GET /metrics from 127.0.0.1:port into t. Returns 0, or -1 with why in err (no connection,
 * not a 200, or text the parser refuses). */
int metrics_scrape(uint16_t port, struct prom_text *t, char *err, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_TESTS_SUPPORT_SCRAPE_H */
