/*
 * The harness ceiling for the forwarding benchmark: the least a DPDK program
 * can do per packet. One worker lcore (the main one when EAL has only one)
 * receives bursts on port 0 and sends them unchanged on port 1. No parsing, no lookup. Built at bench time
 * against the system DPDK; prints the TSC rate, then runs until SIGINT or
 * SIGTERM. Rates are read from outside through DPDK telemetry.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#define BURST 32
#define RING 1024

static volatile int stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int port_up(uint16_t port, struct rte_mempool *pool)
{
	struct rte_eth_conf conf = { 0 };
	uint16_t rxd = RING, txd = RING;

	if (rte_eth_dev_configure(port, 1, 1, &conf) < 0 ||
	    rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd) < 0 ||
	    rte_eth_rx_queue_setup(port, 0, rxd, rte_eth_dev_socket_id(port), NULL, pool) < 0 ||
	    rte_eth_tx_queue_setup(port, 0, txd, rte_eth_dev_socket_id(port), NULL) < 0)
		return -1;
	return rte_eth_dev_start(port);
}

static int forward(void *arg)
{
	struct rte_mbuf *bufs[BURST];
	(void)arg;

	while (!stop) {
		uint16_t n = rte_eth_rx_burst(0, 0, bufs, BURST);
		uint16_t sent = n ? rte_eth_tx_burst(1, 0, bufs, n) : 0;

		while (sent < n)
			rte_pktmbuf_free(bufs[sent++]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct rte_mempool *pool;
	unsigned int worker;
	uint32_t pool_size;

	if (rte_eal_init(argc, argv) < 0) {
		fprintf(stderr, "rxtx_anchor: EAL init failed\n");
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	pool_size = getenv("ANCHOR_POOL") ? (uint32_t)atoi(getenv("ANCHOR_POOL")) : 16383;
	pool = rte_pktmbuf_pool_create("anchor", pool_size, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
	if (pool == NULL || rte_eth_dev_count_avail() < 2 || port_up(0, pool) < 0 || port_up(1, pool) < 0) {
		fprintf(stderr, "rxtx_anchor: needs two ports and memory\n");
		return 1;
	}
	printf("tsc_hz=%" PRIu64 "\n", rte_get_tsc_hz());
	printf("running\n");
	fflush(stdout);
	worker = rte_get_next_lcore(-1, 1, 0);
	if (worker < RTE_MAX_LCORE) {
		rte_eal_remote_launch(forward, NULL, worker);
		rte_eal_wait_lcore(worker);
	} else {
		/* One lcore (-l N): loop on the main one, so that no waiting
		 * main lcore spins on the same CPU. */
		forward(NULL);
	}
	rte_eth_dev_stop(0);
	rte_eth_dev_stop(1);
	rte_eal_cleanup();
	return 0;
}
