/* C wrappers for DPDK's static-inline functions: bindgen cannot link to those,
 * so each gets a one-line exported twin named shim_<original>. */
#ifndef PATRONUS_DPDK_SHIM_H
#define PATRONUS_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <rte_mbuf.h>

uint16_t shim_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t shim_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **tx_pkts, uint16_t nb_pkts);
struct rte_mbuf *shim_rte_pktmbuf_alloc(struct rte_mempool *mp);
int shim_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                                unsigned int count);
void shim_rte_pktmbuf_free(struct rte_mbuf *m);
char *shim_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *shim_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *shim_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int shim_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t shim_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t shim_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
int shim_rte_pktmbuf_linearize(struct rte_mbuf *m);
void *shim_rte_pktmbuf_data(struct rte_mbuf *m);
unsigned shim_rte_lcore_id(void);
int shim_rte_errno(void);
uint64_t shim_rte_rdtsc(void);

/* Receives DPDK's log, one line at a time (without its newline), with the
 * message's level (RTE_LOG_EMERG 1 .. RTE_LOG_DEBUG 8). */
typedef void (*shim_log_sink)(uint32_t level, const char *line, size_t len);

/* Routes DPDK's log (EAL, libraries, drivers) to `sink` instead of stdout and
 * syslog. Call once, before rte_eal_init, so that its messages go there too.
 * Returns 0, or -1 when no stream could be made (DPDK keeps its own). */
int shim_rte_log_to(shim_log_sink sink);

#endif
