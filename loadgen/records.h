/* records.h — the records of a simulated device's packet, made again whenever they are needed
 * from (seed, device, packet number, first record), so a packet that is sent again (TCP after a
 * reconnect, UDP after its ACK did not come) is byte-identical, as a tracker's flash keeps it,
 * without the worker keeping any packet's bytes. Shared by the TCP devices (device.c) and the
 * UDP ones (udp.c), which only differ in how they frame the records.
 *
 * Ownership, lifetimes, threads: records_make writes into the worker's scratch (w->gen, w->pkt,
 * w->io); what it returns lives there until the worker's next call. The worker's thread only. */
#ifndef AVLGATE_LOADGEN_RECORDS_H
#define AVLGATE_LOADGEN_RECORDS_H

#include <stdint.h>

#include "loadgen/device.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fills w->pkt->recs[0 .. n-1] with packet number pkt_no of device g (its global index), whose
 * first record is the device's record number rec_first: realistic records from packetgen
 * (codecs 8, 8E, 16 in turn, the codec in *codec), moved to the device's home area, stamped with
 * the device's record times and, with --verify, the sequence element. Returns n (1 ..
 * --records) or AVL_E_NO_SPACE. */
int records_make(struct worker *w, uint32_t g, uint32_t pkt_no, uint32_t rec_first, uint8_t *codec);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_RECORDS_H */
