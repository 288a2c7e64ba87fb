import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.codelibs.opensearch.runner.OpenSearchRunner;
import org.opensearch.node.Node;

/**
 * The fleet profile's trace store: an N-node OpenSearch cluster in one JVM, every listener on
 * 127.0.0.1.
 *
 * <pre>java -cp LIB/*:CLASSES ErnieOpenSearch BASE_DIR CLUSTER HTTP_PORT TRANSPORT_PORT NODES</pre>
 *
 * Node k (0-based) listens on HTTP_PORT + 10k and TRANSPORT_PORT + 10k (the fleet's port rule) and
 * keeps its data under BASE_DIR/node_(k+1). Writes BASE_DIR/ready once the cluster is green. To take one
 * node away while the others keep serving (what a test of the replicas needs), create the file
 * BASE_DIR/stop-node-K: the launcher closes node K and renames the file to stopped-node-K. A file
 * rather than stdin, so that it works under the stack's supervisor too (it starts every process
 * with stdin on /dev/null). SIGTERM closes every node and exits.
 */
public final class ErnieOpenSearch {
    private static final int PORT_STEP = 10;
    private static final long POLL_MS = 200;

    private ErnieOpenSearch() {
    }

    private static String nodeName(final int k) {
        return "node-" + k;
    }

    public static void main(final String[] args) throws IOException, InterruptedException {
        if (args.length != 5) {
            System.err.println("usage: ErnieOpenSearch BASE_DIR CLUSTER HTTP_PORT TRANSPORT_PORT NODES");
            System.exit(2);
        }
        final String baseDir = args[0];
        final String cluster = args[1];
        final int httpPort = Integer.parseInt(args[2]);
        final int transportPort = Integer.parseInt(args[3]);
        final int nodes = Integer.parseInt(args[4]);

        final List<String> seeds = new ArrayList<>();
        for (int k = 0; k < nodes; k++) {
            seeds.add("127.0.0.1:" + (transportPort + PORT_STEP * k));
        }
        // A restart on the same data: status and stop requests of the last run mean nothing now.
        final Path base = Paths.get(baseDir);
        Files.createDirectories(base);
        Files.deleteIfExists(base.resolve("ready"));
        for (int k = 0; k < nodes; k++) {
            Files.deleteIfExists(base.resolve("stop-node-" + k));
            Files.deleteIfExists(base.resolve("stopped-node-" + k));
        }
        final OpenSearchRunner runner = new OpenSearchRunner();
        // The runner probes for a free HTTP port below 9300 unless told not to; ours are fixed.
        runner.setMaxHttpPort(-1);
        runner.onBuild((id, settings) -> {
            final int k = id - 1; // the runner counts nodes from 1
            settings.put("node.name", nodeName(k));
            settings.put("network.host", "127.0.0.1");
            settings.put("http.port", String.valueOf(httpPort + PORT_STEP * k));
            settings.put("transport.port", String.valueOf(transportPort + PORT_STEP * k));
            settings.putList("discovery.seed_hosts", seeds);
            // Node 0 bootstraps the cluster alone and the others join it: a node that waited for
            // all of them would block its start (the runner starts nodes one after another).
            settings.putList("cluster.initial_cluster_manager_nodes", nodeName(0));
            // A developer's disk is often past the 85/90% watermarks, which would leave replicas
            // unassigned or indices read-only: this store's limit is the trace TTL, not free space.
            settings.put("cluster.routing.allocation.disk.threshold_enabled", false);
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                runner.close();
            } catch (final IOException e) {
                System.err.println("closing: " + e.getMessage());
            }
        }));
        runner.build("-basePath", baseDir, "-clusterName", cluster, "-numOfNode", String.valueOf(nodes),
                "-printOnFailure");
        runner.ensureGreen();
        // Status goes to files, not stdout: log4j closes the process's stdout when the second
        // node reconfigures logging, so nothing printed after that arrives.
        Files.writeString(base.resolve("ready"), "green\n");
        final boolean[] stopped = new boolean[nodes];
        while (true) {
            for (int k = 0; k < nodes; k++) {
                final Path request = base.resolve("stop-node-" + k);
                if (stopped[k] || !Files.exists(request)) {
                    continue;
                }
                final Node node = runner.getNode(k);
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
                stopped[k] = true;
                Files.move(request, base.resolve("stopped-node-" + k));
            }
            Thread.sleep(POLL_MS);
        }
    }
}
