package fila.bench.kstreams;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Pattern;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Produced;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The canonical Kafka Streams word count (Apache Kafka's WordCountDemo):
 * lines in, flatMapValues into lowercase words split on anything that is
 * not a letter or a digit, groupBy word (a repartition topic), count() (a
 * RocksDB store with its changelog), toStream, and the counts out, key the
 * word (String), value the count (Long). The only change: each input value
 * is a JSON line {"text": ...}, parsed with Jackson; a value that is not
 * one is counted, logged and dropped.
 *
 * <p>Kafka Streams' defaults otherwise: the record cache
 * (statestore.cache.max.bytes, 10 MiB per instance) holds each word's
 * latest count and forwards it at a commit or when full, so not every
 * count is written. commit.interval.ms is Kafka Streams' default (30 s at
 * least once, 100 ms exactly once) unless --commit-interval-ms sets it.
 *
 * <p>Prints "kstreams: RUNNING (...)" on stdout, with the commit interval
 * and cache size, each time the instance reaches RUNNING, and
 * "kstreams: REBALANCING" when it leaves it for a rebalance; closes on
 * SIGTERM.
 */
public final class WordCount {
    private static final Logger LOG = LoggerFactory.getLogger(WordCount.class);
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Pattern NOT_ALPHANUMERIC = Pattern.compile("[^\\p{IsAlphabetic}\\p{IsDigit}]+");

    /** Input values that are not {"text": "..."}, skipped. */
    static final AtomicLong BAD_RECORDS = new AtomicLong();

    static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.kstreams.WordCount [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --input-topic T             lines, JSON {\"text\": ...} [lines] (must exist)",
        "  --output-topic T            counts, key the word, value a Long [counts]",
        "  --application-id ID         application id, shared by the instances [wordcount]",
        "  --threads N                 num.stream.threads [1]",
        "  --guarantee G               at-least-once or exactly-once (exactly_once_v2)",
        "                              [at-least-once]",
        "  --commit-interval-ms MS     commit.interval.ms [Kafka Streams' default: 30000 at",
        "                              least once, 100 exactly once]",
        "  --state-dir DIR             state.dir [java.io.tmpdir/kafka-streams]");

    private WordCount() {}

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = Args.parse(argv, USAGE, "kstreams");
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        String inputTopic = args.getOrDefault("input-topic", "lines");
        String outputTopic = args.getOrDefault("output-topic", "counts");
        String appId = args.getOrDefault("application-id", "wordcount");
        int threads = Args.count(args, "threads", 1, USAGE, "kstreams");
        String stateDir = args.getOrDefault("state-dir",
            System.getProperty("java.io.tmpdir") + "/kafka-streams");
        String guarantee = args.getOrDefault("guarantee", "at-least-once");
        if (!guarantee.equals("at-least-once") && !guarantee.equals("exactly-once")) {
            Args.fail(USAGE, "kstreams", "--guarantee is at-least-once or exactly-once, not '" + guarantee + "'");
        }
        boolean exactlyOnce = guarantee.equals("exactly-once");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
            exactlyOnce ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
        if (args.containsKey("commit-interval-ms")) {
            props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG,
                Args.count(args, "commit-interval-ms", 100, 1, 3_600_000, USAGE, "kstreams"));
        }
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        StreamsConfig config = new StreamsConfig(props);
        long commitMs = config.getLong(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG);
        long cacheBytes = config.getLong(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG);

        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, String> lines =
            builder.stream(inputTopic, Consumed.with(Serdes.String(), Serdes.String()));
        KTable<String, Long> counts = lines
            .flatMapValues(WordCount::words)
            .groupBy((key, word) -> word, Grouped.with(Serdes.String(), Serdes.String()))
            .count();
        counts.toStream().to(outputTopic, Produced.with(Serdes.String(), Serdes.Long()));

        KafkaStreams streams = new KafkaStreams(builder.build(), config);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && before != KafkaStreams.State.RUNNING) {
                System.out.println("kstreams: RUNNING (" + threads + " stream thread(s), " + guarantee
                    + ", commit.interval.ms " + commitMs + ", statestore.cache.max.bytes " + cacheBytes + ")");
            } else if (now == KafkaStreams.State.REBALANCING && before == KafkaStreams.State.RUNNING) {
                System.out.println("kstreams: REBALANCING");
            } else if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
            System.out.flush();
        });
        streams.setUncaughtExceptionHandler(e -> {
            LOG.error("stream thread failed", e);
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(20));
            System.err.println("kstreams: stopped; " + BAD_RECORDS.get() + " bad record(s) skipped");
        }, "close-on-exit"));
        streams.start();
        done.await();
        if (streams.state() == KafkaStreams.State.ERROR) {
            System.err.println("kstreams: the instance stopped on an error");
            System.exit(1);
        }
    }

    /** The words of a line {"text": ...}: lowercased, split on anything
     * that is not a letter or a digit; none for a bad line. */
    static List<String> words(String value) {
        String text;
        try {
            JsonNode line = value == null ? null : JSON.readTree(value);
            JsonNode t = line == null ? null : line.get("text");
            if (t == null || !t.isTextual()) {
                throw new IllegalArgumentException("no \"text\" string");
            }
            text = t.asText();
        } catch (Exception e) {
            long n = BAD_RECORDS.incrementAndGet();
            if (n <= 10 || Long.bitCount(n) == 1) {
                LOG.warn("skipping bad record #{}: {}", n, e.getMessage());
            }
            return List.of();
        }
        List<String> words = new ArrayList<>();
        for (String w : NOT_ALPHANUMERIC.split(text.toLowerCase(Locale.ROOT))) {
            if (!w.isEmpty()) {
                words.add(w);
            }
        }
        return words;
    }
}
