{{/* Names: <release>-ernie-otel unless the release name already says ernie-otel. */}}
{{- define "ernie-otel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ernie-otel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* <fullname>-<component>, for the objects of one component. Call with (list $ "agent"). */}}
{{- define "ernie-otel.component" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "ernie-otel.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ernie-otel.labels" -}}
{{- $root := index . 0 }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ernie-otel
{{ include "ernie-otel.selectorLabels" . }}
{{- end }}

{{- define "ernie-otel.selectorLabels" -}}
{{- $root := index . 0 }}
app.kubernetes.io/name: {{ include "ernie-otel.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ernie-otel.image" -}}
{{- $root := index . 0 }}
{{- $img := index . 1 }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}

{{/* Pods running a Collector carry this label; the PodMonitors select on it. */}}
{{- define "ernie-otel.collectorLabel" -}}
ernie-otel.io/collector: "true"
{{- end }}

{{- define "ernie-otel.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "ernie-otel.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* host:port the agents send spans to when there is no lb tier, and the samplers always. */}}
{{- define "ernie-otel.tracesEndpoint" -}}
{{- if .Values.jaeger.enabled }}
{{- printf "%s:%v" (include "ernie-otel.component" (list . "jaeger")) .Values.ports.jaeger_otlp_grpc }}
{{- else }}
{{- required "jaeger.enabled=false needs externalTraces.otlpGrpcEndpoint (host:port of an OTLP/gRPC trace store)" .Values.externalTraces.otlpGrpcEndpoint }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the chart runs its own VictoriaLogs: logStore.url unset. */}}
{{- define "ernie-otel.ownLogStore" -}}
{{- if and .Values.logStore.enabled (not .Values.logStore.url) }}true{{ end }}
{{- end }}

{{/* Base URL the agents' otlp_http/logs exporter appends /insert/opentelemetry/v1/logs to. */}}
{{- define "ernie-otel.logStoreUrl" -}}
{{- if .Values.logStore.url }}
{{- .Values.logStore.url }}
{{- else if .Values.logStore.enabled }}
{{- printf "http://%s:%v" (include "ernie-otel.component" (list . "victorialogs")) .Values.ports.log_store }}
{{- else }}
{{- fail "logStore.enabled=false needs logStore.url (the base URL of an existing log store taking OTLP/HTTP logs)" }}
{{- end }}
{{- end }}

{{/* Environment every Collector container gets: limits, and its own metrics on 0.0.0.0. */}}
{{- define "ernie-otel.collectorCommonEnv" -}}
- name: OTELCOL_MEMORY_LIMIT_MIB
  value: {{ .Values.collector.memoryLimitMiB | quote }}
- name: OTELCOL_MEMORY_SPIKE_LIMIT_MIB
  value: {{ .Values.collector.memorySpikeLimitMiB | quote }}
- name: OTELCOL_LOG_LEVEL
  value: {{ .Values.collector.logLevel | quote }}
- name: OTELCOL_TELEMETRY_HOST
  value: 0.0.0.0
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end }}

{{/* The tail-sampling thresholds (collector/fleet/sampler.yaml reads them). ernie-serve gets the
same ones, so the exemplars it attaches point only at traces the samplers keep. */}}
{{- define "ernie-otel.samplingEnv" -}}
{{- $s := .Values.collector.sampling }}
- name: OTELCOL_SAMPLING_DECISION_WAIT
  value: {{ $s.decisionWait | quote }}
- name: OTELCOL_SAMPLING_LATENCY_MS
  value: {{ $s.latencyMs | quote }}
- name: OTELCOL_SAMPLING_TTFT_MS
  value: {{ $s.ttftMs | quote }}
- name: OTELCOL_SAMPLING_BASELINE_PERCENT
  value: {{ $s.baselinePercent | quote }}
- name: OTELCOL_SAMPLING_HASH_SALT
  value: {{ $s.hashSalt | quote }}
- name: OTELCOL_SAMPLING_MAX_TRACES
  value: {{ $s.maxTraces | quote }}
{{- end }}

{{/* The agent Collector container: the DaemonSet's, or the sidecar in each ernie-serve pod. */}}
{{- define "ernie-otel.agentContainer" -}}
- name: otel-agent
  image: {{ include "ernie-otel.image" (list . .Values.collector.image) }}
  imagePullPolicy: {{ .Values.collector.image.pullPolicy }}
  args:
    - --config=/conf/base.yaml
    - --config=/conf/k8s.yaml
  env:
    {{- include "ernie-otel.collectorCommonEnv" . | nindent 4 }}
    - name: OTELCOL_OTLP_GRPC_ENDPOINT
      value: "0.0.0.0:{{ .Values.ports.otlp_grpc }}"
    - name: OTELCOL_OTLP_HTTP_ENDPOINT
      value: "0.0.0.0:{{ .Values.ports.otlp_http }}"
    - name: OTELCOL_PROMETHEUS_ENDPOINT
      value: "0.0.0.0:{{ .Values.ports.collector_prometheus }}"
    - name: OTELCOL_HEALTH_ENDPOINT
      value: "0.0.0.0:{{ .Values.ports.collector_health }}"
    - name: OTELCOL_TELEMETRY_PORT
      value: {{ .Values.ports.collector_telemetry | quote }}
    - name: OTELCOL_JAEGER_ENDPOINT
      value: {{ include "ernie-otel.tracesEndpoint" . | quote }}
    - name: OTELCOL_DEPLOYMENT_ENVIRONMENT
      value: {{ .Values.collector.deploymentEnvironment | quote }}
    # The logs pipeline's store (collector/otelcol.yaml otlp_http/logs); the base config's
    # default, 127.0.0.1, has nothing behind it in a pod.
    - name: OTELCOL_LOG_STORE_URL
      value: {{ include "ernie-otel.logStoreUrl" . | quote }}
  ports:
    - {name: otlp-grpc, containerPort: {{ .Values.ports.otlp_grpc }}, protocol: TCP}
    - {name: otlp-http, containerPort: {{ .Values.ports.otlp_http }}, protocol: TCP}
    - {name: prom-exporter, containerPort: {{ .Values.ports.collector_prometheus }}, protocol: TCP}
    - {name: otel-health, containerPort: {{ .Values.ports.collector_health }}, protocol: TCP}
    - {name: otel-metrics, containerPort: {{ .Values.ports.collector_telemetry }}, protocol: TCP}
  readinessProbe:
    httpGet: {path: /, port: otel-health}
    periodSeconds: 10
  livenessProbe:
    httpGet: {path: /, port: otel-health}
    periodSeconds: 20
    failureThreshold: 3
  resources:
    {{- toYaml .Values.collector.agent.resources | nindent 4 }}
  securityContext:
    {{- include "ernie-otel.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - {name: agent-config, mountPath: /conf, readOnly: true}
{{- end }}
