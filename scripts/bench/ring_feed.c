/*
 * A NIC stand-in for the benchmarks: a DPDK secondary process that fills
 * buffers of the primary's packet pool with the frames of a pcap file and
 * enqueues them on the receive ring of the primary's net_ring port, so that
 * the primary's worker receives them without copying, as from a NIC's DMA.
 * The copying happens here, on this process's CPU.
 *
 *   ring_feed EAL_ARGS -- POOL PORT FILE.pcap
 *
 * EAL_ARGS must name the primary's --file-prefix, --proc-type=secondary and
 * an lcore id the primary does not use (mempool caches are per lcore id):
 * e.g. --lcores 7@0. Destination MACs are rewritten to the port's own.
 * Runs until SIGINT or SIGTERM; prints "running" once feeding.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_pause.h>
#include <rte_ring.h>

#define BURST 32
#define MAX_FRAMES 65536

static volatile int stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

struct frame {
	uint16_t len;
	uint8_t *data;
};

/* Reads a classic (microsecond or nanosecond) little-endian pcap file. */
static int load(const char *path, struct frame *frames, uint32_t *count)
{
	uint8_t header[24], record[16];
	FILE *f = fopen(path, "rb");
	uint32_t magic;

	if (f == NULL || fread(header, 1, sizeof(header), f) != sizeof(header))
		return -1;
	memcpy(&magic, header, 4);
	if (magic != 0xa1b2c3d4 && magic != 0xa1b23c4d)
		return -1;
	*count = 0;
	while (*count < MAX_FRAMES && fread(record, 1, sizeof(record), f) == sizeof(record)) {
		uint32_t caplen;

		memcpy(&caplen, record + 8, 4);
		if (caplen < RTE_ETHER_HDR_LEN || caplen > 2048)
			return -1;
		frames[*count].len = (uint16_t)caplen;
		frames[*count].data = malloc(caplen);
		if (frames[*count].data == NULL || fread(frames[*count].data, 1, caplen, f) != caplen)
			return -1;
		(*count)++;
	}
	fclose(f);
	return *count > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	static struct frame frames[MAX_FRAMES];
	struct rte_mbuf *bufs[BURST];
	struct rte_ether_addr mac;
	struct rte_mempool *pool;
	struct rte_ring *ring;
	char ring_name[RTE_RING_NAMESIZE];
	uint32_t count, next = 0;
	uint16_t port;
	int args = rte_eal_init(argc, argv);

	if (args < 0) {
		fprintf(stderr, "ring_feed: EAL init failed (is the primary running, without --in-memory?)\n");
		return 1;
	}
	argc -= args;
	argv += args;
	if (argc != 4) {
		fprintf(stderr, "usage: ring_feed EAL_ARGS -- POOL PORT FILE.pcap\n");
		return 1;
	}
	pool = rte_mempool_lookup(argv[1]);
	/* net_ring names the rings of a port it creates ETH_RXTX<queue>_<port>. */
	snprintf(ring_name, sizeof(ring_name), "ETH_RXTX0_%s", argv[2]);
	ring = rte_ring_lookup(ring_name);
	if (pool == NULL || ring == NULL || rte_eth_dev_get_port_by_name(argv[2], &port) != 0 ||
	    rte_eth_macaddr_get(port, &mac) != 0) {
		fprintf(stderr, "ring_feed: no pool %s or port/ring %s in the primary\n", argv[1], ring_name);
		return 1;
	}
	if (load(argv[3], frames, &count) != 0) {
		fprintf(stderr, "ring_feed: %s: not a readable classic pcap file\n", argv[3]);
		return 1;
	}
	for (uint32_t i = 0; i < count; i++)
		memcpy(frames[i].data, &mac, RTE_ETHER_ADDR_LEN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	printf("running: %" PRIu32 " frames into %s\n", count, ring_name);
	fflush(stdout);
	while (!stop) {
		unsigned int sent;

		if (rte_ring_free_count(ring) < BURST) {
			rte_pause(); /* the consumer is behind: nothing to do */
			continue;
		}
		if (rte_pktmbuf_alloc_bulk(pool, bufs, BURST) != 0)
			continue; /* the pool is drained: the consumer is behind */
		for (int i = 0; i < BURST; i++) {
			const struct frame *f = &frames[next];

			rte_memcpy(rte_pktmbuf_mtod(bufs[i], void *), f->data, f->len);
			bufs[i]->data_len = f->len;
			bufs[i]->pkt_len = f->len;
			bufs[i]->port = port;
			next = next + 1 == count ? 0 : next + 1;
		}
		sent = rte_ring_enqueue_burst(ring, (void **)bufs, BURST, NULL);
		if (sent < BURST)
			rte_pktmbuf_free_bulk(bufs + sent, BURST - sent);
	}
	rte_eal_cleanup();
	return 0;
}
